import os

import ray


def test_local_ray_runs_tasks_with_shared_caches(ray_local):
    assert ray_local["CPU"] >= 2

    @ray.remote
    def where():
        import app  # noqa: F401  sets cache defaults in the worker too
        return os.environ["HF_HOME"], os.environ["WANDB_MODE"]

    hf_home, wandb_mode = ray.get(where.remote())
    assert hf_home == os.environ["HF_HOME"] and wandb_mode == "offline"
    assert ray.get([ray.remote(lambda x: x * x).remote(i) for i in range(4)]) == [0, 1, 4, 9]
