"""The ``diffuserve`` command line (``cli/main.py``)."""
