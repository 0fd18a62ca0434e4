"""What a section of the results document says its numbers cover (`facts`): the images, the protocol and the
observation, the settings, hardware and software, iterations, time per image and dates, and how it stands against
the paper's setting."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipelines.reporting.results_format import finite_values, one_or_counted, plain
from pipelines.stats import mean

if TYPE_CHECKING:
    from pipelines.reporting.results_sections import Section

_CHANNEL = {"y": "on Y (BT.601, 16–235)", "rgb": "over the RGB channels", "gray": "on the grey image"}


def _crop_words(label: str) -> str:
    parts = []
    for part in label.split("+"):
        if m := re.fullmatch(r"(\d+)x(\d+)", part):
            parts.append(f"a {m[1]}×{m[2]} centre crop of the clean image")
        elif m := re.fullmatch(r"center(\d+)", part):
            parts.append(f"a centre crop of the clean image to a multiple of {m[1]}")
        elif part:
            parts.append(f"the crop {part!r}")
    return ", then ".join(parts)


def _psnr_words(protocol: tuple[Any, Any, Any]) -> str:
    channel, shave, crop = protocol
    text = "PSNR " + (_CHANNEL.get(channel, f"on {channel}") if channel else "(channel not recorded)")
    text += "" if shave is None else f", {shave} pixels shaved from each border" if shave else ", no border shaved"
    return text + (f", after {_crop_words(crop)}" if crop else ", on the whole image")


def _observation_words(s: Section) -> str:
    syn = s.synthesis
    task = syn.get("task")
    if not syn:
        return "the images as given (no synthesised degradation)"
    if task == "sr":
        return f"the LR image made from the clean one with Pillow LANCZOS ×{syn.get('scale')}"
    if task == "denoise":
        text = f"Gaussian noise of σ = {plain(syn.get('sigma'))} (0–255 units) added, clipped to [0, 1]"
    elif task == "inpaint":
        text = f"a Bernoulli mask dropping {plain(100 * float(syn.get('drop') or 0))} % of the pixels"
    else:
        text = f"dipcore.degrade(task={task!r})"
    return text + ", drawn from a fixed per-image seed (the run's seed and the image key)"


def _net_words(c: Mapping[str, Any]) -> str:
    o = c.get("net_options") or {}
    down, up, skip = o.get("channels_down"), o.get("channels_up"), o.get("channels_skip")
    if c.get("net") != "skip" or not down:
        return f"{c.get('net')} net" + (f" ({', '.join(f'{k} {plain(v)}' for k, v in sorted(o.items()))})" if o else "")
    width = (
        f"{down[0]} channels at {len(down)} scales"
        if len(set(down)) == 1 and down == up
        else f"channels {plain(down)} down and {plain(up)} up"
    )
    skips = f"{skip[0]} skip channels" if skip and len(set(skip)) == 1 else f"skip channels {plain(skip)}"
    rest = ([f"{o['upsample']} upsampling"] if o.get("upsample") else []) + (
        [f"{o['pad']} padding"] if o.get("pad") else []
    )
    return ", ".join([f"skip net with {width}", skips, *rest])


def _settings_words(c: Mapping[str, Any]) -> str:
    if not c:
        return "not recorded"
    parts = [_net_words(c)]
    if c.get("input"):
        parts.append(f"input z: {c['input']}, {c.get('input_depth')} channels")
    parts.append(f"Adam, LR {plain(c.get('lr'))}, {c.get('iterations')} iterations")
    if c.get("reg_noise_std"):
        parts.append(f"input jitter σ {c['reg_noise_std']:.3g}")
    if c.get("ema"):
        parts.append(f"EMA of outputs with weight {plain(c['ema'])}")
    parts.append("returns the EMA of outputs" if c.get("output") == "average" else "returns the last iterate")
    if (c.get("restarts") or 1) > 1:
        parts.append(f"{c['restarts']} runs averaged")
    if c.get("backtrack"):
        parts.append("backtracking when the loss jumps")
    if c.get("early_stopping"):
        parts.append(
            f"early stopping by the running-variance rule (W = {c.get('es_window')}, P = {c.get('es_patience')})"
        )
    if c.get("crop") == "center":
        parts.append("centre-cropped to the net's multiple")
    return "; ".join(parts)


def _engine_words(text: str | None) -> str | None:
    if not text:
        return None
    try:
        engine = json.loads(text)
    except ValueError:
        return text
    if isinstance(engine, Mapping):
        return ", ".join(f"{k} {plain(v)}" for k, v in sorted(engine.items()))
    return plain(engine)


def _coverage(s: Section) -> str:
    ok = s.ok
    total = s.paper.images if s.paper else len(s.rows)
    text = f"{len(ok)} of {total} images" + ("" if s.paper else " in the report")
    if s.paper and len(ok) < total:
        text += (" (partial): " + ", ".join(r["image_key"] for r in ok)) if ok else " (none restored)"
    failed = [r for r in s.rows if r["status"] == "error"]
    if failed:
        text += f"; {len(failed)} failed: " + ", ".join(
            f"{r['image_key']} ({(r.get('error') or 'no message')[:80]})" for r in failed
        )
    skipped = [r["image_key"] for r in s.rows if r["status"] == "skipped"]
    if skipped:
        text += f"; {len(skipped)} restored by a run that is not in these reports: " + ", ".join(skipped)
    return f"- **Coverage:** {text}."


def _against_paper(s: Section) -> str:
    p = s.paper
    if p is None:
        return "- **The paper:** has no figure for this dataset and task."
    reasons = []
    if len(s.ok) < p.images:
        reasons.append(f"{len(s.ok)} of the set's {p.images} images")
    if crop := s.synthesis.get("crop_size"):
        reasons.append(f"each image centre-cropped to {crop}×{crop} first (a smoke run)")
    iterations = s.config.get("iterations")
    if iterations is not None and iterations != p.iterations:
        reasons.append(f"{iterations} iterations (the paper: {p.iterations})")
    head = (
        "not directly: " + "; ".join(reasons)
        if reasons
        else f"the whole set with the paper's iteration count ({p.iterations})"
    )
    return f"- **Against the paper's setting:** {head}. The paper's protocol: {p.protocol}."


def facts(s: Section) -> list[str]:
    ok = s.ok
    protocols = [(r.get("psnr_channel"), r.get("psnr_shave"), r.get("psnr_crop")) for r in ok]
    seeds = one_or_counted(r.get("seed") for r in ok) or "not recorded"
    devices = one_or_counted(r.get("device") for r in ok) or "not recorded"
    nodes = len({r["ray_node"] for r in ok if r.get("ray_node")})
    torch = one_or_counted(r.get("torch_version") for r in ok) or "not recorded in these reports"
    engine = one_or_counted(_engine_words(r.get("engine_json")) for r in ok) or "not recorded in these reports"
    protocol = (
        f"- **Protocol:** {one_or_counted(protocols, _psnr_words) or 'not recorded'}. Observation: "
        f"{_observation_words(s)}. Seed {seeds} (the net's initialisation and input)."
    )
    hardware = (
        f"- **Hardware and software:** {devices}{f' on {nodes} Ray node(s)' if nodes else ''}; "
        f"torch {torch}; engine {engine}."
    )
    settings = f"- **Settings:** {_settings_words(s.config)}."
    return [_coverage(s), protocol, settings, hardware, _iterations(ok), _time(ok), _against_paper(s)]


def _iterations(ok: list[dict]) -> str:
    run = one_or_counted(r.get("iterations_run") for r in ok) or "not recorded"
    returned = one_or_counted(r.get("iteration_returned") for r in ok) or "not recorded"
    why = one_or_counted(r.get("stop_reason") for r in ok)
    return (
        f"- **Iterations:** {run} run per image; output returned from iteration {returned}"
        + (f" (stopped by: {why})" if why and why != "iterations" else "")
        + "."
    )


def _time(ok: list[dict]) -> str:
    secs = finite_values(ok, "wall_seconds")
    days = sorted({r["finished_at"].date().isoformat() for r in ok if r.get("finished_at")})
    runs = ", ".join(f"`{x}`" for x in sorted({r["run_id"] for r in ok}))
    when = " to ".join(dict.fromkeys([days[0], days[-1]])) if days else "not recorded"
    if not secs:
        return f"- **Time per image:** not recorded. **Dates:** {when}. **Runs:** {runs or '–'}."
    return (
        f"- **Time per image:** {mean(secs):.1f} s on average ({min(secs):.1f} to {max(secs):.1f} s; "
        f"{sum(secs):.1f} s for {len(secs)} images), the wall-clock time of each image's final attempt. "
        f"**Dates:** {when} (UTC). **Runs:** {runs}."
    )
