"""Write openapi/openapi.json from the app (``--check``: fail when the committed file differs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "openapi" / "openapi.json"


def render() -> str:
    sys.path.insert(0, str(REPO))
    from api.config import Settings
    from api.main import create_app

    spec = create_app(Settings(api_keys="", warm_models="")).openapi()
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true")
    a = p.parse_args()
    text = render()
    if a.check:
        if not SPEC.is_file() or SPEC.read_text() != text:
            print(f"{SPEC} is out of date: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    SPEC.parent.mkdir(exist_ok=True)
    SPEC.write_text(text)
    print(SPEC)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
