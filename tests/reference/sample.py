"""Token sampling reference (dsc_sample_tokens, dsc_model_generate's rules) in plain Python
floats: math.exp, a sort, sequential sums -- the same float64 operations in the same order as
the C reference, written independently. Also the counter-based splitmix64 stream."""

import math

import numpy as np

M64 = (1 << 64) - 1


def mix64(z):
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def urand(key, ctr):
    """(u in [0, 1), new counter): draw ctr + 1 of the stream key."""
    ctr += 1
    r = mix64(key + ctr * 0x9E3779B97F4A7C15)
    return (r >> 11) * (1.0 / 9007199254740992.0), ctr


def gen_key(seed, b):
    """dsc_model_generate's stream key of sequence b."""
    base = mix64(seed ^ 0x6A09E667F3BCC908)
    return mix64(base + mix64(b + 1))


def signed(u):
    """A uint64 as the int64 with the same bits."""
    return u - (1 << 64) if u >= (1 << 63) else u


def keys(seed, B):
    """rng [B, 2] int64 of generate's streams for a seed (counters 0)."""
    r = np.zeros((B, 2), np.int64)
    for b in range(B):
        r[b, 0] = signed(gen_key(seed, b))
    return r


def argmax(row):
    """NaN never wins, ties: the lowest id; -1 when every value is NaN."""
    best, bv = -1, 0.0
    for v, x in enumerate(row.tolist()):
        if x == x and (best < 0 or x > bv):
            best, bv = v, x
    return best


def dist(row, temperature, top_k, top_p):
    """The sampling distribution (list of floats), or None when nothing is left."""
    xs = [float(x) for x in row]
    inv_t = 1.0 / float(np.float32(temperature))
    any_inf = any(math.isinf(x) and x > 0 for x in xs)
    finite = [x for x in xs if math.isfinite(x)]
    mx = max(finite) if finite else -math.inf
    if any_inf:
        p = [1.0 if (math.isinf(x) and x > 0) else 0.0 for x in xs]
    else:
        p = [math.exp((x - mx) * inv_t) if math.isfinite(x) else 0.0 for x in xs]
    n = sum(1 for q in p if q > 0)
    if n == 0:
        return None
    use_k = 0 < top_k < n
    tp = float(np.float32(top_p))
    if use_k or tp < 1.0:
        order = sorted((v for v in range(len(p)) if p[v] > 0), key=lambda v: (-p[v], v))
        keep = top_k if use_k else len(order)
        if tp < 1.0:
            tot = 0.0
            for v in order[:keep]:
                tot += p[v]
            target = tp * tot
            cum, i = 0.0, 0
            while i < keep:
                cum += p[order[i]]
                i += 1
                if cum >= target:
                    break
            keep = i
        for v in order[keep:]:
            p[v] = 0.0
    s = 0.0
    for q in p:
        s += q
    inv = 1.0 / s
    return [q * inv for q in p]


def draw(p, u):
    """The first id whose running sum exceeds u times the total (the last positive id if none)."""
    tot, last = 0.0, 0
    for v, q in enumerate(p):
        if q > 0:
            tot += q
            last = v
    target = u * tot
    c = 0.0
    for v, q in enumerate(p):
        if q <= 0:
            continue
        c += q
        if target < c:
            return v
    return last


def sample(logits, rng, temperature=0.0, top_k=0, top_p=1.0, active=None, untouched=-7):
    """(tokens [B] int32, rng after) for logits [B, V]; inactive rows keep `untouched`."""
    logits = np.asarray(logits, np.float32)
    toks = np.full(logits.shape[0], untouched, np.int32)
    out_rng = np.array(rng, np.int64, copy=True)
    for b in range(logits.shape[0]):
        if active is not None and not active[b]:
            continue
        if float(np.float32(temperature)) == 0.0:
            toks[b] = argmax(logits[b])
            continue
        p = dist(logits[b], temperature, top_k, top_p)
        if p is None:
            toks[b] = -1
            continue
        u, ctr = urand(int(out_rng[b, 0]) & M64, int(out_rng[b, 1]) & M64)
        out_rng[b, 1] = signed(ctr & M64)
        toks[b] = draw(p, u)
    return toks, out_rng
