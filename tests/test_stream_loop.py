"""The engine stream's flow, with a stand-in engine: never more requests in flight than its cap,
prompts (and their decoded images) made only as rows go in, and a prompt that cannot be made
(a chat template that refuses a text) recorded as that input's error while the rest runs."""

from dataclasses import dataclass

import torch

from ddpinfer.compute.stream_loop import EngineTask, Streamer
from ddpinfer.compute.unit_tracker import WindowRows
from ddpinfer.inputs import Row


@dataclass
class Done:
    request_id: str
    finish_reason: str = "stop"
    token_ids: tuple = (1, 2)


class Engine:
    """Finishes one request per step; remembers the most it ever held."""

    max_num_seqs = 2

    def __init__(self):
        self.running: list[str] = []
        self.most = 0

    def add(self, request_id, prompt, sampling):
        self.running.append(request_id)
        self.most = max(self.most, len(self.running))

    def step(self):
        return [Done(self.running.pop(0))] if self.running else []

    def shutdown(self):
        pass


class Prompts:
    """A chat template that refuses texts saying REFUSE (raising, as jinja's raise_exception
    does); counts how many prompts are alive at most (each would hold decoded images)."""

    def __init__(self):
        self.made = 0
        self.largest_call = 0

    def prepare(self, rows):
        if any("REFUSE" in r.text for r in rows):
            raise ValueError("the template refuses this conversation")
        self.largest_call = max(self.largest_call, len(rows))
        self.made += len(rows)
        return [{"prompt": r.text} for r in rows]

    def sampling(self, row):
        return {}

    def prompt_tokens(self, prompt):
        return 1

    def text(self, token_ids):
        return "ok"

    def columns(self, done, row):
        return {"generated_text": [self.text(done.token_ids)]}


class Writer:
    def __init__(self):
        self.batches, self.units, self.ended = [], [], []

    def submit_batch(self, key, result):
        self.batches.append(result)

    def submit(self, result):
        self.units.append(result)

    def end_window(self, key):
        self.ended.append(key)


def window(units: int, per_unit: int, refuse: int | None = None) -> WindowRows:
    rows = [[Row(index=u * per_unit + i, id=str(u * per_unit + i),
                 text="REFUSE" if u * per_unit + i == refuse else f"text {u * per_unit + i}")
             for i in range(per_unit)] for u in range(units)]  # fmt: skip
    return WindowRows(list(range(units)), rows)


def test_a_large_window_goes_in_at_the_cap_and_a_refused_prompt_is_one_bad_input():
    engine, prompts, writer = Engine(), Prompts(), Writer()
    task = EngineTask(prompts=prompts, engine=engine, device=torch.device("cpu"))
    streamer = Streamer(task, writer, lambda *a: None)
    cap = 2 * engine.max_num_seqs
    streamer.add(window(units=4, per_unit=64, refuse=7))  # a window of 256 rows
    while not streamer.idle:
        streamer.top_up(cap)
        assert engine.most <= cap and prompts.largest_call <= cap
        streamer.step()
    assert engine.most == cap
    assert writer.ended == [0] and len(writer.units) == 4
    errors = [e for u in writer.units for e in u.errors]
    assert [e["row"] for e in errors] == [7]
    assert "its prompt could not be made: ValueError: the template refuses" in errors[0]["error"]
    assert sum(len(u.good) for u in writer.units) == 255


def test_an_engine_process_found_ended_is_a_dead_engine_before_vllm_says_so():
    """vLLM's monitor thread shuts the engine's other processes down before it sets
    ``engine_dead``, and a rank waiting on that flag alone once waited 10 minutes (its stall
    clock) for an engine killed the moment it was up: the process's own exit code counts too."""
    import multiprocessing
    import queue
    import threading
    import types

    from ddpinfer.compute.engines.vllm_engine import EngineFailed, VllmEngine

    ended = multiprocessing.get_context("spawn").Process(target=int)
    ended.start()
    ended.join()
    resources = types.SimpleNamespace(
        engine_dead=False, engine_manager=types.SimpleNamespace(processes=[ended])
    )
    client = types.SimpleNamespace(outputs_queue=queue.Queue(), resources=resources)
    engine = VllmEngine.__new__(VllmEngine)
    engine.engine = types.SimpleNamespace(engine_core=client, should_execute_dummy_batch=False)
    raised = []

    def step():
        try:
            engine.step()
        except EngineFailed as e:
            raised.append(e)

    waiter = threading.Thread(target=step, daemon=True)
    waiter.start()
    waiter.join(timeout=60)  # a bound for a busy machine: the check is immediate
    assert raised and "died" in str(raised[0])
