"""Ray mode: the platform as a Ray Serve application. An ingress deployment runs the same FastAPI app (gateway,
control plane, serving layer); each loaded base model is an application of its own whose engine replicas Ray
places, routes to (LoRA adapters by model multiplexing) and autoscales on the load the engines report. Ray is an
optional dependency: nothing here is imported unless `llmaas serve --ray` (or a Serve config) asks for it."""
