#!/usr/bin/python3
"""The peer: capture K as it leaves layer L's k_proj with PyTorch on the CPU, written as
well as we know how, so the race against our WebGPU forward pass is between equals.

    /usr/bin/python3 bench/peer_torch.py DIR --layer 5 --tokens 128000,791,... [--out K.f32]

What it does (and why each choice is the fast one on a CPU):
- Parses the safetensors headers itself and memory-maps the shards (no copy of a file in
  memory, and only the pages of the tensors it touches are ever read).
- Reads only what the answer needs: the prompt's embedding rows, layers 0..L-1 whole,
  layer L's input_layernorm and k_proj.
- Converts BF16/F16 weights with torch's own vectorised conversion (`Tensor.copy_`) into
  f32 buffers allocated once and reused by every layer (fresh allocations of hundreds of
  MB cost more in page faults than the conversion itself).
- Runs fp32 matmuls (`torch.nn.functional.linear`, BLAS) with every core
  (`torch.set_num_threads(os.cpu_count())`), under `torch.inference_mode()`.
- Llama conventions as transformers: RMSNorm in f32 with the config's eps, rotate_half
  RoPE (llama3 rope_scaling supported), causal attention with query head h reading KV
  head h // (H // KV), SwiGLU MLP.

It prints one JSON line: {"seconds", "cpu", "bytes", "threads", "peak_rss"}, where seconds
counts from after `import torch` to K in hand (the interpreter and torch's import are
start-up, like Deno's start and WebGPU device request on our side). With --out it
writes K (T, KV*HD) as little-endian f32 so the caller can check it against ours.
"""
import argparse
import json
import math
import mmap
import os
import resource
import struct
import time

import torch

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


class Checkpoint:
    """The tensor table of a safetensors checkpoint (one file or sharded) over mmaps."""

    def __init__(self, folder):
        self.folder = folder
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        else:
            weight_map = None
        self.maps, self.tensors = {}, {}
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        for file in files:
            with open(os.path.join(folder, file), "rb") as f:
                # ACCESS_COPY: a private mapping torch may wrap without a read-only warning;
                # nothing is ever written to it, so no page is copied.
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            (n,) = struct.unpack("<Q", mm[:8])
            header = json.loads(mm[8:8 + n])
            self.maps[file] = mm
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                self.tensors[name] = (file, 8 + n + begin, 8 + n + end, info["dtype"], info["shape"])
        self.bytes_read = 0

    def view(self, name, rows=None):
        """The stored tensor as a torch view of the mmap (no copy), optionally some rows."""
        file, begin, end, dtype, shape = self.tensors[name]
        dt = DTYPES[dtype]
        count = (end - begin) // torch.tensor([], dtype=dt).element_size()
        t = torch.frombuffer(self.maps[file], dtype=dt, count=count, offset=begin).view(*shape)
        t = t[rows] if rows is not None else t
        self.bytes_read += t.numel() * t.element_size()
        return t


class Buffers:
    """f32 buffers by role, allocated on first use and reused for every layer."""

    def __init__(self):
        self.by_role = {}

    def f32(self, role, stored):
        buf = self.by_role.get(role)
        if buf is None or buf.shape != stored.shape:
            buf = self.by_role[role] = torch.empty(stored.shape, dtype=torch.float32)
        buf.copy_(stored)  # torch's own BF16/F16 -> F32 conversion, vectorised and threaded
        return buf


def rope_tables(cfg, T):
    """cos, sin (T, HD) for positions 0..T-1, HF's rotate_half layout (halves repeated)."""
    HD = cfg["hidden_size"] // cfg["num_attention_heads"]
    HD = cfg.get("head_dim") or HD
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (torch.arange(0, HD, 2, dtype=torch.float64) / HD))
    sc = cfg.get("rope_scaling")
    if sc and sc.get("rope_type", sc.get("type")) == "llama3":
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        mid = (wavelen <= old / lo) & (wavelen >= old / hi)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif sc:
        raise SystemExit(f"peer_torch.py: rope_scaling {sc} is not supported")
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def run(folder, layer, ids):
    F = torch.nn.functional
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    HD = cfg.get("head_dim") or D // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    T = len(ids)
    ck = Checkpoint(folder)
    buf = Buffers()
    x = ck.view("model.embed_tokens.weight", rows=torch.tensor(ids)).float()  # (T, D)
    cos, sin = rope_tables(cfg, T)
    mask = torch.full((T, T), float("-inf")).triu(1)
    for l in range(layer):
        p = f"model.layers.{l}."
        w = lambda role: buf.f32(role, ck.view(p + role))
        xn = rmsnorm(x, w("input_layernorm.weight"), eps)
        q = F.linear(xn, w("self_attn.q_proj.weight")).view(T, H, HD).transpose(0, 1)
        k = F.linear(xn, w("self_attn.k_proj.weight")).view(T, KV, HD).transpose(0, 1)
        v = F.linear(xn, w("self_attn.v_proj.weight")).view(T, KV, HD).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin  # (H, T, HD)
        k = k * cos + rotate_half(k) * sin  # (KV, T, HD)
        k = k.repeat_interleave(H // KV, dim=0)  # query head h reads KV head h // (H/KV)
        v = v.repeat_interleave(H // KV, dim=0)
        s = q @ k.transpose(1, 2) / math.sqrt(HD) + mask
        a = (s.softmax(-1) @ v).transpose(0, 1).reshape(T, H * HD)
        x = x + F.linear(a, w("self_attn.o_proj.weight"))
        xn = rmsnorm(x, w("post_attention_layernorm.weight"), eps)
        g = F.linear(xn, w("mlp.gate_proj.weight"))
        u = F.linear(xn, w("mlp.up_proj.weight"))
        x = x + F.linear(F.silu(g) * u, w("mlp.down_proj.weight"))
    p = f"model.layers.{layer}."
    xn = rmsnorm(x, buf.f32("input_layernorm.weight", ck.view(p + "input_layernorm.weight")), eps)
    k = F.linear(xn, buf.f32("self_attn.k_proj.weight", ck.view(p + "self_attn.k_proj.weight")))
    return k.contiguous(), ck.bytes_read


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--tokens", default="128000,791,4062,14198,39935,35308,927,279")
    ap.add_argument("--out", help="write K (T, KV*HD) as little-endian f32 here")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ids = [int(t) for t in a.tokens.split(",")]
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    with torch.inference_mode():
        k, nbytes = run(a.dir, a.layer, ids)
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    if a.out:
        k.numpy().astype("<f4").tofile(a.out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    print(json.dumps({"seconds": seconds, "cpu": cpu, "bytes": nbytes, "threads": torch.get_num_threads(),
                      "peak_rss": peak}))


if __name__ == "__main__":
    main()
