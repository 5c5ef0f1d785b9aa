"""Calibrate enrollment's voice checks on real speech: the one-speaker check, the quality gate's similarity,
and the per-file SNR / clipping / music checks. Prints the figures the thresholds' comments quote.

Voices (tests/human_speech.py, flows/demo/voices.py):
  real: CMU ARCTIC a0007 (one man, 4 s, studio; vendored); with ``--human DIR`` (``pip download --no-deps
  pyannote-audio==4.0.7 -d DIR``) the pyannote call, two women on a phone line ("Diane", "Sheila"): each
  woman's solo speech (overlaps cut out, ~10 s each) and the whole 30 s call;
  flite's ARCTIC-trained voices slt, rms, awb and the diphone kal16 when ``flite`` is on PATH;
  the pip TTS voices: piper joe and Kokoro's five (their styles come from one model).

1. one speaker (tasks/enroll/one_speaker.py), per window length: window-vs-window similarity within one
   voice and across voices; the separation of the best two-way split for every single voice and for takes
   where two voices alternate every 3 s (and the pyannote call); the verdict of `count_speakers` with
   the window length's settings; the threshold's margins.
2. gate similarity (tasks/train/evaluate.py): an eval-length clip (2.5 s) against the centroid of the rest
   of the same voice's speech, and against other voices' centroids.
3. per-file checks (tasks/enroll/speech_checks.py) on real speech and degraded copies: white noise at
   several SNRs, hard clipping at several gains, a music bed at several levels.

    python benchmarks/speaker_checks_calibration.py [--human DIR] [--cache DIR] [--windows 1.5,2,3]
    python benchmarks/speaker_checks_calibration.py --only small   # the demo's small uploads, one voice each
"""
from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import human_speech  # noqa: E402
from ingest_audio import music_bed  # noqa: E402

from voicefleet.flows.demo.enrollment import EN_ENROLL  # noqa: E402
from voicefleet.tasks.enroll.one_speaker import count_speakers, file_speech, split_two  # noqa: E402
from voicefleet.tasks.enroll.speech_checks import QCConfig, measure_file  # noqa: E402
from voicefleet.tasks.enroll.vad import detect  # noqa: E402
from voicefleet.tasks.measure.audio import load_audio, resample  # noqa: E402
from voicefleet.tasks.measure.speaker import embed, embed_many, mean_embedding, similarity  # noqa: E402
from voicefleet.tasks.train.evaluate import Gate  # noqa: E402

SR = 16000
TURN_S = 3.0
FLITE = ("slt", "rms", "awb", "kal16")
PAIRS = [("Diane", "Sheila"), ("arctic", "Diane"), ("arctic", "flite-rms"), ("flite-slt", "Diane"),
         ("flite-rms", "flite-awb"), ("flite-kal16", "tts-joe"), ("tts-joe", "tts-alpha"), ("flite-slt", "tts-alpha"),
         ("tts-gongitsune", "tts-nezumi"), ("tts-nezumi", "tts-tebukuro"), ("tts-alpha", "tts-tebukuro")]


def voices(human: str | None, cache: Path) -> dict[str, np.ndarray]:
    """name -> (T,) float32 at 16 kHz of one voice's speech; TTS cached in `cache`."""
    from voicefleet.flows.demo.voices import DEMO_VOICES, load_engine

    a, r = human_speech.arctic()
    out = {"arctic": resample(a, r, SR)}
    if human:
        sr, turns = human_speech.speaker_turns(human)
        out |= {spk: resample(np.concatenate(parts), sr, SR) for spk, parts in turns.items()}
    text = " ".join(EN_ENROLL[:6])
    if shutil.which("flite"):
        for v in FLITE:
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "x.wav"
                subprocess.run(["flite", "-voice", v, "-t", text, "-o", str(p)], check=True)
                out[f"flite-{v}"] = load_audio(p.read_bytes(), SR, name="x.wav")
    for v in DEMO_VOICES:
        f = cache / f"tts-{v.key}.npy"
        if not f.exists():
            eng = load_engine(v.engine)
            gap = np.zeros(int(0.3 * SR), np.float32)
            np.save(f, np.concatenate([np.concatenate([resample(eng.speak(v, t, None, "en", 1.0), eng.sample_rate, SR), gap])
                                       for t in EN_ENROLL[:6]]))
        out[f"tts-{v.key}"] = np.load(f)
    return out


def speech(x: np.ndarray) -> np.ndarray:
    return file_speech(x, detect(x)[1])


def alternate(a: np.ndarray, b: np.ndarray, seconds: float = 20.0) -> np.ndarray:
    """A take where the two voices alternate every TURN_S (a short voice's speech is cycled)."""
    n = int(TURN_S * SR)
    out, i = [], 0
    while sum(map(len, out)) < seconds * SR:
        for x in (a, b):
            start = (i * n) % max(1, len(x) - n)
            out.append(x[start:start + n])
        i += 1
    return np.concatenate(out)


def one_speaker(vox: dict[str, np.ndarray], call: np.ndarray | None, windows: list[tuple[float, float]],
                threshold: float) -> None:
    print("\n== 1. one speaker: is an upload one voice?")
    single = {k: speech(v) for k, v in vox.items()}  # ARCTIC (4 s) is too short to judge alone: shown, not counted
    mixed = {f"{a} + {b}": alternate(single[a], single[b]) for a, b in PAIRS if a in single and b in single}
    if call is not None:
        mixed["pyannote call (whole)"] = speech(call)
    for w, hop in windows:
        qc = QCConfig(speaker_window_s=w, speaker_hop_s=hop, min_speaker_windows=3)  # judge even short voices
        n = int(w * SR)
        emb = {}
        for k, x in single.items():
            wins = [x[i:i + n] for i in range(0, len(x) - n + 1, n)]  # disjoint windows for the pair figures
            emb[k] = np.stack([e for e in embed_many(wins, SR) if isinstance(e, np.ndarray)])
        same = {k: (e @ e.T)[np.triu_indices(len(e), 1)] for k, e in emb.items() if len(e) > 1}
        cross = {(a, b): emb[a] @ emb[b].T for a, b in itertools.combinations(emb, 2)}
        worst = sorted(cross, key=lambda p: -cross[p].max())[:4]
        print(f"\n-- {w:g} s windows (hop {hop:g} s)")
        print("  window vs window, one voice (min/median): "
              + ", ".join(f"{k} {v.min():.2f}/{np.median(v):.2f}" for k, v in same.items()))
        print("  window vs window, two voices (max/median), highest: "
              + ", ".join(f"{a}~{b} {cross[(a, b)].max():.2f}/{np.median(cross[(a, b)]):.2f}" for a, b in worst))
        if call is not None and "Diane" in emb:
            print(f"  the two women of the call: max {cross[('Diane', 'Sheila')].max():.3f}; "
                  f"lowest same-voice pair {min(v.min() for v in same.values()):.3f}")
        seps = {}
        for group, takes in (("one voice", single), ("two voices", mixed)):
            print(f"  {group}:")
            for k, x in takes.items():
                c = count_speakers([(k, x)], qc)
                seps[(group, k)] = c.separation
                print(f"    {k:34s} windows {c.windows:3d} separation {c.separation:.3f} minor {c.other_fraction:.2f} "
                      f"-> {c.clusters} speaker(s)")
        one = [v for (g, k), v in seps.items() if g == "one voice" and k != "arctic"]
        styles = {k for g, k in seps if g == "two voices" and k.count("tts-") == 2 and "joe" not in k}
        real_two = [v for (g, k), v in seps.items() if g == "two voices" and k not in styles]
        kokoro = [v for (g, k), v in seps.items() if k in styles]
        print(f"  one voice: separation max {max(one):.3f}; two voices (not Kokoro pairs): min {min(real_two):.3f}; "
              f"Kokoro style pairs {' '.join(f'{v:.3f}' for v in kokoro)}")
        print(f"  threshold {threshold:.3f}: margin over one voice {threshold - max(one):+.3f}, "
              f"under two voices {min(real_two) - threshold:+.3f}; midpoint of the gap {(max(one) + min(real_two)) / 2:.3f}")


def noisy_speaker(vox: dict[str, np.ndarray], call: np.ndarray | None) -> None:
    """The one-speaker check on copies with white noise 30 / 25 / 20 dB under the speech (what the SNR check
    lets through), one voice and two voices alternating every 3 s; default settings."""
    rng = np.random.default_rng(1)
    qc = QCConfig()
    sp = {k: speech(v) for k, v in vox.items()}
    one = {k: vox[k] for k in ("Diane", "Sheila", "flite-slt", "tts-joe", "tts-kumo") if k in vox}
    two = {f"{a} + {b}": alternate(sp[a], sp[b]) for a, b in (("Diane", "Sheila"), ("flite-rms", "flite-awb"),
                                                                ("flite-kal16", "tts-joe"), ("flite-slt", "tts-alpha"))
           if a in sp and b in sp}
    if call is not None:
        two["pyannote call (whole)"] = call
    print("\n-- white noise under the speech (separation -> verdict), default settings")
    for group, cases in (("one voice", one), ("two voices", two)):
        for name, x in cases.items():
            x = (x * 0.5 / np.abs(x).max()).astype(np.float32)
            level = np.sqrt(np.mean(x[np.abs(x) > 0.01] ** 2))
            row = []
            for db in (None, 30, 25, 20):
                y = x if db is None else x + rng.standard_normal(len(x)).astype(np.float32) * level / 10 ** (db / 20)
                c = count_speakers([(name, speech(y))], qc)
                row.append(f"{'clean' if db is None else f'{db} dB'} {c.separation:.3f}/{c.windows}w->{c.clusters}")
            print(f"  {group:10s} {name:26s} " + "  ".join(row))


def upload_scale(cache: Path) -> None:
    """Uploads of 30 takes (one sentence each, ~80-100 s of speech): one voice, and 3-15 takes by another."""
    from voicefleet.flows.demo.voices import DEMO_VOICES, load_engine

    if not shutil.which("flite"):
        print("\n-- uploads of 30 takes: skipped (flite not on PATH)")
        return
    piper = load_engine("piper")
    joe = next(d for d in DEMO_VOICES if d.key == "joe")
    takes = {}
    for v in ("slt", "rms", "awb", "kal16", "joe"):
        takes[v] = []
        for i, text in enumerate(EN_ENROLL):
            f = cache / f"take-{v}-{i}.npy"
            if not f.exists():
                if v == "joe":
                    x = resample(piper.speak(joe, text, None, "en", 1.0), piper.sample_rate, SR)
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        path = Path(tmp) / "x.wav"
                        subprocess.run(["flite", "-voice", v, "-t", text, "-o", str(path)], check=True)
                        x = load_audio(path.read_bytes(), SR, name="x.wav")
                np.save(f, x)
            takes[v].append((f"{v}-{i}.wav", speech(np.load(f))))
    qc = QCConfig()
    print(f"\n-- uploads of {len(EN_ENROLL)} takes (default settings)")
    cases = {f"{v} alone": t for v, t in takes.items()}
    for a, b, k in (("slt", "joe", 6), ("rms", "awb", 6), ("rms", "awb", 15), ("kal16", "joe", 6), ("slt", "rms", 3)):
        cases[f"{a} x{len(EN_ENROLL) - k} + {b} x{k}"] = takes[a][:len(EN_ENROLL) - k] + takes[b][:k]
    for name, t in cases.items():
        c = count_speakers(t, qc)
        print(f"  {name:18s} {sum(len(x) for _, x in t) / SR:5.1f} s, windows {c.windows}: separation "
              f"{c.separation:.3f}, minor {c.other_fraction:.2f} -> {c.clusters} speaker(s), files named {len(c.files)}")


def small_uploads(seeds: int = 3, clips: tuple[int, ...] = (4, 8)) -> None:
    """The demo's own enrollment sets (flows/demo/enrollment.py: takes of 2-6 s, one sentence each at its own
    speed, level and noise floor), every demo voice, a few seeds and take counts: one voice each, small
    uploads. Prints the separation, the window count, the threshold at that count and the verdict."""
    from voicefleet.flows.demo.enrollment import build_demo_enrollment
    from voicefleet.flows.demo.voices import DEMO_VOICES
    from voicefleet.tasks.enroll.one_speaker import separation_threshold

    qc = QCConfig()
    print("\n-- the demo's enrollment sets (one voice each): separation / windows / threshold there -> verdict")
    by_n: dict[int, list[float]] = {}
    for n_clips in clips:
        for seed in range(seeds):
            with tempfile.TemporaryDirectory() as tmp:
                build_demo_enrollment(Path(tmp), n_speakers=len(DEMO_VOICES), clips_per_speaker=n_clips, seed=seed)
                for spk in sorted(Path(tmp).iterdir()):
                    pieces = []
                    for f in sorted(spk.glob("take*")):
                        x = load_audio(f.read_bytes(), SR, name=f.name)
                        pieces.append((f.name, file_speech(x, detect(x)[1])))
                    c = count_speakers(pieces, qc)
                    by_n.setdefault(c.windows, []).append(c.separation)
                    print(f"  {n_clips} takes, seed {seed}, {spk.name:16s} {c.separation:.3f} / {c.windows:2d} / "
                          f"{separation_threshold(c.windows, qc):.3f} -> {c.clusters} speaker(s)")
    print("  highest per window count: " + ", ".join(f"{n}: {max(v):.3f}" for n, v in sorted(by_n.items())))


def check_cost(vox: dict[str, np.ndarray], seconds: float = 60.0, repeats: int = 3) -> None:
    """Wall time of `count_speakers` on `seconds` of one voice's speech, against embedding the same speech once
    as whole <= 10 s pieces (about what the clustering of VAD segments it replaces embedded)."""
    x = np.concatenate([speech(v) for k, v in vox.items() if k.startswith("tts-joe") or k == "flite-slt"])
    x = np.tile(x, int(np.ceil(seconds * SR / len(x))))[:int(seconds * SR)]
    pieces = [x[i:i + 10 * SR] for i in range(0, len(x), 10 * SR)]
    qc = QCConfig()
    count_speakers([("a.wav", x)], qc)  # warm
    t_new, t_old = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        c = count_speakers([("a.wav", x)], qc)
        t1 = time.perf_counter()
        embed_many(pieces, SR)
        t_new.append(t1 - t0)
        t_old.append(time.perf_counter() - t1)
    print(f"\n-- cost, {seconds:g} s of speech ({c.windows} windows of {qc.speaker_window_s:g} s): count_speakers "
          f"{min(t_new):.2f} s, embedding it once in 10 s pieces {min(t_old):.2f} s ({min(t_new) / min(t_old):.1f}x; "
          f"best of {repeats})")


def gate_similarity(vox: dict[str, np.ndarray], clip_s: float = 2.5) -> None:
    print(f"\n== 2. gate similarity: a {clip_s:g} s clip vs the centroid of a voice's other speech (2 s pieces)")
    n, gate = int(clip_s * SR), Gate().min_similarity
    sp = {k: speech(v) for k, v in vox.items() if len(speech(v)) > 3 * n}
    cent = {k: mean_embedding([embed(x[i:i + 2 * SR], SR) for i in range(0, len(x) - 2 * SR + 1, 2 * SR)]) for k, x in sp.items()}
    same, other = [], []
    for k, x in sp.items():
        for i in range(0, len(x) - n + 1, n):
            clip = embed(x[i:i + n], SR)
            rest = np.concatenate([x[:i], x[i + n:]])
            same.append((similarity(clip, mean_embedding([embed(rest[j:j + 2 * SR], SR)
                                                            for j in range(0, len(rest) - 2 * SR + 1, 2 * SR)])), k))
            other += [(similarity(clip, c), f"{k}->{t}") for t, c in cent.items() if t != k]
    in_order = [(v, k) for v, k in other] + [(v, k + "=") for v, k in same]  # clips in speech order, per pair
    same.sort()
    other.sort(reverse=True)
    print("  same voice, lowest: " + ", ".join(f"{v:.3f} ({k})" for v, k in same[:5]))
    for group in ("real", "all"):
        keep = (lambda k: not any(t in k for t in ("tts-", "flite-"))) if group == "real" else (lambda k: True)
        s = [v for v, k in same if keep(k)]
        o = [v for v, k in other if keep(k)]
        if s and o:
            print(f"  {group}: same voice {min(s):.3f}-{max(s):.3f} (mean {np.mean(s):.3f}); other voice max {max(o):.3f} "
                  f"(mean {np.mean(o):.3f}); gate {gate:g} passes {sum(v >= gate for v in o)}/{len(o)} other-voice clips")
    print("  other voice, highest: " + ", ".join(f"{v:.3f} ({k})" for v, k in other[:6]))
    # the gate's figure is the mean over the evaluation sentences (3 in English): means of 3 clips
    means = {}
    for v, k in in_order:
        means.setdefault(k, []).append(v)
    for label, keep in (("same voice", lambda k: k.endswith("=")), ("other voice", lambda k: not k.endswith("="))):
        for group, real in (("real", True), ("all", False)):
            m = [float(np.mean(v[i:i + 3])) for k, v in means.items() if keep(k)
                 and (not real or not any(t in k for t in ("tts-", "flite-"))) for i in range(0, len(v) - 2, 3)]
            if m:
                print(f"  gate figure (mean of 3 clips), {label}, {group}: {min(m):.3f}-{max(m):.3f} (n {len(m)})")


def _measure(name: str, x: np.ndarray, qc: QCConfig):
    _, _, mask = detect(x)
    return measure_file(name, x, SR, x, mask, qc)


def file_checks(vox: dict[str, np.ndarray], call: np.ndarray | None) -> None:
    print("\n== 3. per-file checks on real speech and degraded copies")
    qc = QCConfig()
    rng = np.random.default_rng(0)
    pause = lambda s: (rng.standard_normal(int(s * SR)) * 10 ** (-70 / 20)).astype(np.float32)  # noqa: E731
    real = {"arctic (studio)": vox["arctic"]}
    if call is not None:
        real["pyannote call (phone)"] = call
    for k in ("flite-slt", "tts-joe"):
        if k in vox:  # TTS sentences with room-noise pauses, as an upload has
            real[k] = np.concatenate([pause(0.5), vox[k] + pause(len(vox[k]) / SR), pause(0.5)])
    for name, x in real.items():
        x = (x * 0.5 / np.abs(x).max()).astype(np.float32)
        m = _measure(name, x, qc)
        print(f"  {name}: SNR {m.snr_db:.1f} dB ({m.snr_method}), clipped {m.clipped_fraction:.4%}, "
              f"music {m.music_fraction:.0%}, problems: {m.problems or 'none'}")
        sp = x[np.abs(x) > 0.01]
        for snr in (40, 30, 25, 20, 15, 10):
            noise = rng.standard_normal(len(x)).astype(np.float32)
            noise *= np.sqrt(np.mean(sp**2) / np.mean(noise**2)) / 10 ** (snr / 20)
            m = _measure(name, x + noise, qc)
            print(f"    white noise at {snr:2d} dB under the speech: measured SNR {m.snr_db:5.1f} dB ({m.snr_method}) "
                  f"-> {'rejected' if m.snr_db < qc.min_snr_db else 'accepted'}")
        full = x / np.abs(x).max()
        m = _measure(name, full * 0.999, qc)
        print(f"    peak-normalised to full scale, not clipped: clipped {m.clipped_fraction:.4%}")
        for gain_db in (1, 3, 6, 10):
            y = np.clip(full * 10 ** (gain_db / 20), -1, 1)
            truth = float(np.mean(np.abs(full * 10 ** (gain_db / 20)) >= 1))
            m = _measure(name, y, qc)
            print(f"    clipped by +{gain_db:2d} dB: {truth:.3%} of samples cut, measured {m.clipped_fraction:.3%} "
                  f"-> {'rejected' if m.clipped_fraction > qc.max_clipped_fraction else 'accepted'}")
        bed = resample(music_bed(int(len(x) * 24000 / SR)), 24000, SR)[:len(x)]
        for smr in (30, 20, 15, 10, 5, 0):
            y = x + bed * np.sqrt(np.mean(sp**2) / np.mean(bed**2)) / 10 ** (smr / 20)
            m = _measure(name, y.astype(np.float32), qc)
            print(f"    music bed {smr:2d} dB under the speech: music {m.music_fraction:.0%} "
                  f"-> {'rejected' if m.music_fraction > qc.max_music_fraction else 'accepted'}"
                  f" (SNR reads {m.snr_db:.1f} dB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--human", help="folder with the pyannote-audio wheel (the two-women call)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vf-speaker-calibration"))
    ap.add_argument("--windows", default="1.5/0.75,2/1,3/1,3/1.5", help="window/hop (s) for the one-speaker check")
    ap.add_argument("--only", choices=["speaker", "noisy", "small", "gate", "files"], help="run one part")
    args = ap.parse_args()
    if args.only == "small":  # needs no voices of its own
        small_uploads()
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    vox = voices(args.human, cache)
    call = None
    if args.human:
        (audio, sr), _ = human_speech.pyannote_sample(args.human)
        call = resample(audio, sr, SR)
    print("voices: " + ", ".join(f"{k} {len(v) / SR:.1f} s" for k, v in vox.items()))
    if args.only in (None, "speaker"):
        one_speaker(vox, call, [tuple(map(float, w.split("/"))) for w in args.windows.split(",")],
                    QCConfig().two_speaker_separation)
        noisy_speaker(vox, call)
        upload_scale(cache)
        check_cost(vox)
    if args.only == "noisy":
        noisy_speaker(vox, call)
    if args.only is None:
        small_uploads()
    if args.only in (None, "gate"):
        gate_similarity(vox)
    if args.only in (None, "files"):
        file_checks(vox, call)


if __name__ == "__main__":
    main()
