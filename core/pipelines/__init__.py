"""diffusers pipelines behind the job contract: schedulers by name, a warm LRU of pipelines, one executor per task."""
