"""A real OpenAI-compatible LLM server for tests: llama-cpp-python serving a tiny
random-weight llama model written here with the ``gguf`` package (no download).

    python tests/llm_server.py gguf PATH     # write the model, print its size and time
    python tests/llm_server.py serve PATH    # write it and serve it until Ctrl-C

The model: a 2-layer llama (n_embd 32, 2 heads, n_ff 64, context 512) with an SPM
vocabulary of the control tokens, the 256 byte tokens (so any prompt tokenizes) and a
hundred words. Its weights are random but shaped so that only words are ever sampled:
every embedding carries a large constant in dimension 0, which survives the residual
stream and the final RMS norm, and the output rows of the control and byte tokens are
strongly negative in that dimension. So a completion is a run of words that never
stops by itself (end-of-sequence is never sampled): ``max_tokens`` decides its length.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MODEL_ALIAS = "tiny-llama"

_WORDS_TEXT = """
the swarm node task worker model token queue lease peer gossip shell python prompt
result heartbeat retry timeout output input cluster laptop desk gpu vram latency price
score ready done failed running pending coordinator attempt fence commit journal digest
delta merge alive suspect dead left drain join secret curve socket message codec version
protocol spec job subtask capability lint format syntax refactor review plan build test
bench fast deep small large quick slow red green blue one two three four five six seven
eight nine ten and or not is are was a an of to in on at by for with from up down
"""
WORDS = tuple(_WORDS_TEXT.split())


def make_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    """Write the tiny llama GGUF to ``path`` (needs ``gguf`` and ``numpy``)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_ff, n_layer, n_ctx = 32, 2, 64, 2, 512

    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    n_special = len(tokens)
    tokens += ["▁" + w for w in WORDS]
    types += [gguf.TokenType.NORMAL] * len(WORDS)
    n_vocab = len(tokens)
    scores = [0.0] * n_special + [-float(i) for i in range(len(WORDS))]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("swarmd-tiny-llama")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    def rand(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # numpy shapes are (rows, cols) = GGUF ne reversed: a (out, in) matrix is ne [in, out].
    embd = rand(n_vocab, n_embd)
    embd[:, 0] = 8.0
    w.add_tensor("token_embd.weight", embd)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(n_embd, n_ff))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    out = rand(n_vocab, n_embd, scale=1.0)
    out[:, 0] = 0.0
    out[:n_special, 0] = -10.0  # never sample <unk>, <s>, </s> or raw bytes
    w.add_tensor("output.weight", out)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_python() -> tuple[str | None, str]:
    """The interpreter that can run ``llama_cpp.server`` (``$SWARMD_LLAMA_PYTHON``, else
    this one) and, if none can, why not."""
    python = os.environ.get("SWARMD_LLAMA_PYTHON") or sys.executable
    probe = "import llama_cpp.server.app, gguf, numpy"
    try:
        proc = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{python}: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"{python} cannot import llama_cpp.server, gguf, numpy: {last}"
    return python, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LlamaServer:
    endpoint: str  # ".../v1", as a [models.NAME] profile gives it
    model: str
    process: subprocess.Popen[bytes]
    log: Path
    gguf_bytes: int
    gguf_seconds: float
    start_seconds: float


@contextlib.contextmanager
def llama_server(
    python: str,
    workdir: Path,
    *,
    start_timeout_s: float = 60.0,
    alias: str = MODEL_ALIAS,
    embeddings: bool = False,
) -> Iterator[LlamaServer]:
    """Write the tiny model, start ``python -m llama_cpp.server`` on a free loopback port,
    wait until ``/v1/models`` answers, yield, stop it (SIGTERM, SIGKILL after 5 s)."""
    import httpx  # not needed by the model writer, which may run in another interpreter

    model_path = workdir / "tiny-llama.gguf"
    log = workdir / "llama-server.log"
    t0 = time.monotonic()
    subprocess.run(
        [python, __file__, "gguf", str(model_path)], check=True, timeout=60, capture_output=True
    )
    gguf_seconds = time.monotonic() - t0
    port = free_port()
    argv = [
        python, "-m", "llama_cpp.server",
        "--model", str(model_path), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "512", "--n_threads", "1", "--n_threads_batch", "1",
        "--seed", "1",
        # Its default cuts a streaming completion short (an empty answer, no error)
        # when another request arrives; a real server queues or batches them.
        "--interrupt_requests", "False",
        *(["--embedding", "true"] if embeddings else []),  # /v1/embeddings too
    ]  # fmt: skip
    t1 = time.monotonic()
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    endpoint = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = t1 + start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama server exited ({process.returncode}): {_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama server not ready in {start_timeout_s}s: {_tail(log)}")
            try:
                if httpx.get(endpoint + "/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        yield LlamaServer(
            endpoint=endpoint,
            model=alias,
            process=process,
            log=log,
            gguf_bytes=model_path.stat().st_size,
            gguf_seconds=gguf_seconds,
            start_seconds=time.monotonic() - t1,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _tail(log: Path, n: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("gguf", "serve"):
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[1])
    started = time.monotonic()
    make_tiny_llama(path)
    print(f"{path}: {path.stat().st_size} bytes in {time.monotonic() - started:.3f}s")
    if argv[0] == "serve":
        with llama_server(sys.executable, path.parent) as server:
            print(f"serving {server.model} at {server.endpoint}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
