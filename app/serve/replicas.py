"""The deployments behind the OpenAI ingress (app/serve/ingress.py): LLMServer holds the generation engine
(app/serve/engines.py; LoRA adapters as Serve multiplexed models), RewardServer the reward model that ranks
`best_of` candidates, Retriever the index behind "rag": true.

    serve run serve_configs/demo.yaml      # app.serve.ingress:build_app binds them under the ingress
"""

import asyncio

from ray import serve

from app.models import resolve
from app.serve.config import ServeArgs
from app.serve.engines import GenParams, make_engine


# A stopping replica waits for its in-flight requests in polls of graceful_shutdown_wait_loop_s (Serve's
# default 2 s, at least one poll, one deployment after the other): 0.5 s drains the same requests sooner.
@serve.deployment(graceful_shutdown_wait_loop_s=0.5)
class LLMServer:
    def __init__(self, args: ServeArgs, model_path: str):
        self.args = args
        self.engine = make_engine(args.engine, model_path, args.dtype, args.max_batch_size,
                                  args.trust_remote_code, args.adapters, args.max_loaded_adapters,
                                  args.vllm_args, int(args.cpus_per_replica), args.prefill_tokens)

        async def load(name: str):  # a plain function: Serve's LRU cache of loaded adapters wraps it
            await asyncio.to_thread(self.engine.load_adapter, name, self.args.adapters[name])
            return _Loaded(self.engine, name)
        self.adapter = serve.multiplexed(max_num_models_per_replica=args.max_loaded_adapters)(load)

    async def generate(self, prompt_ids: list[int], params: dict):
        adapter = serve.get_multiplexed_model_id() or None
        if adapter:
            await self.adapter(adapter)
        async for event in self.engine.generate(prompt_ids, GenParams(**params), adapter):
            yield event

    async def prompt_logprobs(self, prompt_ids: list[int], k: int) -> list:
        adapter = serve.get_multiplexed_model_id() or None
        if adapter:
            await self.adapter(adapter)
        return await self.engine.prompt_logprobs(prompt_ids, k, adapter)


@serve.deployment(graceful_shutdown_wait_loop_s=0.5)
class RewardServer:
    """The reward model (app/train/reward.py RewardModel) behind `best_of`: scores a prompt's candidates."""

    def __init__(self, path: str):
        from app.train.reward import RewardModel
        self.model = RewardModel(resolve(path))

    async def score(self, prompt, responses: list[str]) -> list[float]:
        return await asyncio.to_thread(self.model.score, [prompt] * len(responses), responses)


@serve.deployment(graceful_shutdown_wait_loop_s=0.5)
class Retriever:
    """The index behind "rag": true (app/rag/index.py): the top k chunks for a query."""

    def __init__(self, index: str):
        from app.rag.index import Index
        self.index = Index(index)

    async def search(self, query: str, k: int, mode: str) -> list[dict]:
        return await asyncio.to_thread(self.index.search, query, k, mode)


class _Loaded:
    """What Serve's multiplexing caches per adapter; unloading (LRU) drops the adapter from the engine."""

    def __init__(self, engine, name: str):
        self.engine, self.name = engine, name

    def __del__(self):
        self.engine.unload_adapter(self.name)
