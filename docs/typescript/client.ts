import createClient from "openapi-fetch";
import type { paths } from "./schema";

const client = createClient<paths>({
  baseUrl: process.env.DIFFUSERVE_URL ?? "http://127.0.0.1:8000",
  headers: { Authorization: `Bearer ${process.env.DIFFUSERVE_API_KEY}` },
});

// submit (only the fields you set: the rest take the model's defaults)
const { data: job, error } = await client.POST("/v1/txt2img", { body: { model: "digits", prompt: "7", seed: 3 } });
if (error) throw new Error(JSON.stringify(error));
// long-poll until it ends
let done = job!;
while (!["succeeded", "failed", "canceled"].includes(done.status)) {
  const r = await client.GET("/v1/jobs/{job_id}", { params: { path: { job_id: job!.id }, query: { wait: 30 } } });
  done = r.data!;
}
for (const o of done.output ?? []) console.log(done.status, o.url!.split("?")[0], o.width, o.height, o.seed);
// a bad request: 422 naming the field
const bad = await client.POST("/v1/txt2img", { body: { model: "digits", prompt: "7", num_inference_steps: 5000 } });
console.log("error:", bad.response.status, bad.error?.error?.code, bad.error?.error?.field);
