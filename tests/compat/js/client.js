// Replicate's JavaScript client (replicate@1.4.0, unchanged) against a diffuserve gateway: `baseUrl` and the API key
// are all that differ. Prints one JSON object on stdout; tests/compat/test_replicate_files.py asserts on it (and on
// the pixels behind the URLs it names). Usage: GATEWAY=http://127.0.0.1:PORT KEY=... IMAGE=init.png node client.js
"use strict";

const fs = require("node:fs");
const Replicate = require("replicate");

async function main() {
  const replicate = new Replicate({ auth: process.env.KEY, baseUrl: `${process.env.GATEWAY}/v1` });
  const out = {};

  // 1. run(): one POST with Prefer: wait, the output URLs back
  const digits = { prompt: "7", num_inference_steps: 10, seed: 42, scheduler: "DDIM", guidance_scale: 2.0 };
  out.run = await replicate.run("acme/digits", { input: digits });

  // 2. predictions.create, then wait() polls predictions.get until the end
  const created = await replicate.predictions.create({ model: "acme/digits", input: { ...digits, seed: 43 } });
  const done = await replicate.wait(created);
  out.prediction = { created_status: created.status, id: done.id, status: done.status, output: done.output };

  // 3. a file input: the Buffer goes to files.create (POST /v1/files) and the prediction gets its urls.get
  const png = fs.readFileSync(process.env.IMAGE);
  const seen = [];
  const img2img = { prompt: "a cat", image: png, prompt_strength: 0.6, num_inference_steps: 4, seed: 5 };
  out.img2img = await replicate.run("acme/tiny-sd", { input: img2img }, (p) => seen.push(p));
  out.img2img_prediction = { id: seen[0].id, input: seen[0].input, status: seen[seen.length - 1].status };

  // 4. the file API itself: a Blob with metadata (the client sends it as a JSON blob part), get, list, delete
  const file = await replicate.files.create(new Blob([png], { type: "image/png" }), { purpose: "test" });
  const got = await replicate.files.get(file.id);
  const listed = await replicate.files.list();
  const deleted = await replicate.files.delete(file.id);
  let after = null;
  try {
    await replicate.files.get(file.id);
  } catch (e) {
    after = e.response ? e.response.status : String(e);
  }
  out.file = { created: file, got, listed_ids: listed.results.map((f) => f.id), deleted, get_after_delete: after };

  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
