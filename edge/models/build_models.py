"""Build the two gateway models shipped in this folder, reproducibly (fixed seeds).

    python -m edge.models.build_models            # rewrite the .onnx files here
    python -m edge.models.build_models --out DIR  # build elsewhere (the tests compare)

Needs the dev extra (scikit-learn, onnx); the gateway needs only onnxruntime. Both models
are trained on *simulated* data; nothing is downloaded. Say so wherever they are used:
they are sound starting points, to be re-fitted against a co-located reference instrument
before their numbers are trusted for compliance.

pm_humidity_correction.onnx
    Input ``features`` [N, 2] = (PM as read by a low-cost optical sensor in ug/m3,
    relative humidity in %). Output ``pm_corrected`` [N, 1] in ug/m3.
    Optical counters over-read at high humidity because particles take up water. The
    training data come from the kappa-Koehler mass growth factor used in published
    corrections (Crilley et al., AMT 11, 709-720, 2018; Di Antonio et al. 2018)::

        C(RH) = 1 + (kappa / 1.65) / (1 / a_w - 1),   a_w = RH / 100 (capped at 0.98)
        PM_read = PM_true * C(RH) * (1 + 5 % noise) + 0.5 ug/m3 noise

    with kappa ~ N(0.40, 0.08) per sample (mixed urban aerosol). A gradient-boosted
    regressor learns log(PM_read / PM_true) from (PM_read, RH); the graph then returns
    ``PM_read * exp(-prediction)``.

sensor_anomaly.onnx
    Input ``window`` [N, 16] = the last 16 values of one series, oldest first, ending with
    the reading being scored. Output ``score`` [N, 1] in [0, 1]: the probability that the
    window shows a sensor fault. Faults simulated: *stuck* (constant value), *spike* (the
    last value jumps by 6-30 noise sigmas) and *drift* (a ramp of 6-20 sigmas across the
    window). Healthy windows are a smooth signal plus noise at scales from 0.05 to 20, so
    the score works for temperatures and PM alike. Five scale-free features are computed
    inside the graph (log spread, log mean step, last-value z-score, max step over mean
    step, trend t-statistic); a small MLP (16 hidden units) scores them.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
WINDOW = 16
SEED = 20240611
EPS = 1e-3


# --------------------------------------------------------------------------- humidity


def growth_factor(rh: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    aw = np.minimum(rh, 98.0) / 100.0
    return 1.0 + (kappa / 1.65) / (1.0 / aw - 1.0)


def simulate_humidity(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pm_true = rng.lognormal(mean=np.log(12.0), sigma=0.8, size=n)
    rh = rng.uniform(10.0, 99.0, size=n)
    kappa = np.clip(rng.normal(0.40, 0.08, size=n), 0.1, 0.8)
    pm_read = pm_true * growth_factor(rh, kappa) * (1 + rng.normal(0, 0.05, n))
    pm_read = np.maximum(pm_read + rng.normal(0, 0.5, n), 0.1)
    return np.column_stack([pm_read, rh]).astype(np.float32), pm_true


def build_humidity(out: Path) -> dict[str, float]:
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(SEED)
    features, pm_true = simulate_humidity(20000, rng)
    target = np.log(features[:, 0] / pm_true)
    model = GradientBoostingRegressor(
        n_estimators=60, max_depth=3, learning_rate=0.15, random_state=SEED
    )
    model.fit(features, target)
    onx = convert_sklearn(
        model, initial_types=[("features", FloatTensorType([None, 2]))], target_opset=17
    )
    graph = onx.graph
    inner = graph.output[0].name
    graph.initializer.extend(
        [
            helper.make_tensor("col0_start", TensorProto.INT64, [1], [0]),
            helper.make_tensor("col0_end", TensorProto.INT64, [1], [1]),
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Neg", [inner], ["neg_log_growth"]),
            helper.make_node("Exp", ["neg_log_growth"], ["inv_growth"]),
            helper.make_node("Slice", ["features", "col0_start", "col0_end", "axis1"], ["pm"]),
            helper.make_node("Mul", ["pm", "inv_growth"], ["pm_corrected"]),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("pm_corrected", TensorProto.FLOAT, [None, 1]))
    graph.name = "pm_humidity_correction"
    _stamp(onx, "PM humidity correction (kappa-Koehler, trained on simulated data)")
    onnx.checker.check_model(onx)
    onnx.save(onx, out)
    test, truth = simulate_humidity(5000, np.random.default_rng(SEED + 1))
    corrected = _run(out, test)[:, 0]
    raw_err = float(np.mean(np.abs(test[:, 0] - truth) / truth))
    fixed_err = float(np.mean(np.abs(corrected - truth) / truth))
    return {"mean_rel_error_raw": raw_err, "mean_rel_error_corrected": fixed_err}


# --------------------------------------------------------------------------- anomaly


def window_features(x: np.ndarray) -> np.ndarray:
    """The five features the ONNX graph computes, in numpy (for training and checks)."""
    x = x.astype(np.float32)
    mean = x.mean(axis=1, keepdims=True)
    xc = x - mean
    spread = np.sqrt((xc * xc).mean(axis=1) + EPS * EPS)
    diffs = np.abs(np.diff(x, axis=1))
    mean_step = diffs.mean(axis=1)
    head = x[:, :-1]
    head_mean = head.mean(axis=1)
    head_std = np.sqrt(((head - head_mean[:, None]) ** 2).mean(axis=1) + EPS * EPS)
    z_last = np.abs(x[:, -1] - head_mean) / (head_std + EPS)
    step_ratio = diffs.max(axis=1) / (mean_step + EPS)
    t = np.arange(WINDOW, dtype=np.float32) - (WINDOW - 1) / 2
    slope = (xc @ t) / float(t @ t)
    resid = xc - slope[:, None] * t[None, :]
    rstd = np.sqrt((resid * resid).mean(axis=1) + EPS * EPS)
    trend = np.abs(slope) * WINDOW / (rstd + EPS)
    return np.column_stack(
        [
            np.log(spread),
            np.log(mean_step + EPS),
            np.log1p(z_last),
            np.log1p(step_ratio),
            np.log1p(trend),
        ]
    ).astype(np.float32)


def simulate_windows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    scale = np.exp(rng.uniform(np.log(0.05), np.log(20.0), n))
    level = rng.uniform(-10, 400, n)
    t = np.arange(WINDOW)
    phase = rng.uniform(0, 2 * np.pi, n)
    smooth = (
        scale[:, None]
        * rng.uniform(0, 1.5, n)[:, None]
        * np.sin(phase[:, None] + t[None, :] * rng.uniform(0.0, 0.15, n)[:, None])
    )
    x = level[:, None] + smooth + rng.normal(0, 1, (n, WINDOW)) * scale[:, None]
    label = np.zeros(n, dtype=np.int64)
    kind = rng.integers(0, 6, n)  # 0-2 healthy, 3 stuck, 4 spike, 5 drift
    stuck = kind == 3
    x[stuck] = np.round(x[stuck, -1:], 1).repeat(WINDOW, axis=1)
    spike = kind == 4
    sign = rng.choice([-1.0, 1.0], spike.sum())
    x[spike, -1] += sign * rng.uniform(6, 30, spike.sum()) * scale[spike]
    drift = kind == 5
    ramp = rng.uniform(6, 20, drift.sum()) * scale[drift] * rng.choice([-1.0, 1.0], drift.sum())
    x[drift] += ramp[:, None] * (t[None, :] / (WINDOW - 1))
    label[kind >= 3] = 1
    return x.astype(np.float32), label


def build_anomaly(out: Path) -> dict[str, float]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(SEED)
    windows, labels = simulate_windows(30000, rng)
    feats = window_features(windows)
    scaler = StandardScaler().fit(feats)
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=400, random_state=SEED)
    mlp.fit(scaler.transform(feats), labels)

    t = np.arange(WINDOW, dtype=np.float32) - (WINDOW - 1) / 2
    consts: dict[str, Any] = {
        "eps2": np.array(EPS * EPS, np.float32),
        "eps": np.array(EPS, np.float32),
        "one": np.array(1.0, np.float32),
        "t_col": (t / float(t @ t)).reshape(WINDOW, 1).astype(np.float32),
        "t_row": t.reshape(1, WINDOW),
        "window_len": np.array(float(WINDOW), np.float32),
        "head_start": np.array([0], np.int64),
        "head_end": np.array([WINDOW - 1], np.int64),
        "last_start": np.array([WINDOW - 1], np.int64),
        "last_end": np.array([WINDOW], np.int64),
        "tail_start": np.array([1], np.int64),
        "axis1": np.array([1], np.int64),
        "mu": scaler.mean_.astype(np.float32),
        "sigma": scaler.scale_.astype(np.float32),
        "w1": mlp.coefs_[0].astype(np.float32),
        "b1": mlp.intercepts_[0].astype(np.float32),
        "w2": mlp.coefs_[1].astype(np.float32),
        "b2": mlp.intercepts_[1].astype(np.float32),
    }
    n = helper.make_node
    nodes = [
        n("ReduceMean", ["window", "axis1"], ["mean"], keepdims=1),
        n("Sub", ["window", "mean"], ["xc"]),
        n("Mul", ["xc", "xc"], ["xc2"]),
        n("ReduceMean", ["xc2", "axis1"], ["var"], keepdims=1),
        n("Add", ["var", "eps2"], ["var_e"]),
        n("Sqrt", ["var_e"], ["spread"]),
        n("Log", ["spread"], ["f1"]),
        # steps
        n("Slice", ["window", "tail_start", "last_end", "axis1"], ["tail"]),
        n("Slice", ["window", "head_start", "head_end", "axis1"], ["head"]),
        n("Sub", ["tail", "head"], ["diff"]),
        n("Abs", ["diff"], ["adiff"]),
        n("ReduceMean", ["adiff", "axis1"], ["mean_step"], keepdims=1),
        n("Add", ["mean_step", "eps"], ["mean_step_e"]),
        n("Log", ["mean_step_e"], ["f2"]),
        # z of the last value against the rest
        n("ReduceMean", ["head", "axis1"], ["head_mean"], keepdims=1),
        n("Sub", ["head", "head_mean"], ["hc"]),
        n("Mul", ["hc", "hc"], ["hc2"]),
        n("ReduceMean", ["hc2", "axis1"], ["hvar"], keepdims=1),
        n("Add", ["hvar", "eps2"], ["hvar_e"]),
        n("Sqrt", ["hvar_e"], ["hstd"]),
        n("Add", ["hstd", "eps"], ["hstd_e"]),
        n("Slice", ["window", "last_start", "last_end", "axis1"], ["last"]),
        n("Sub", ["last", "head_mean"], ["dlast"]),
        n("Abs", ["dlast"], ["adlast"]),
        n("Div", ["adlast", "hstd_e"], ["z"]),
        n("Add", ["z", "one"], ["z1"]),
        n("Log", ["z1"], ["f3"]),
        # largest step over the mean step
        n("ReduceMax", ["adiff", "axis1"], ["max_step"], keepdims=1),
        n("Div", ["max_step", "mean_step_e"], ["ratio"]),
        n("Add", ["ratio", "one"], ["ratio1"]),
        n("Log", ["ratio1"], ["f4"]),
        # trend t-statistic
        n("MatMul", ["xc", "t_col"], ["slope"]),
        n("Mul", ["slope", "t_row"], ["fit"]),
        n("Sub", ["xc", "fit"], ["resid"]),
        n("Mul", ["resid", "resid"], ["resid2"]),
        n("ReduceMean", ["resid2", "axis1"], ["rvar"], keepdims=1),
        n("Add", ["rvar", "eps2"], ["rvar_e"]),
        n("Sqrt", ["rvar_e"], ["rstd"]),
        n("Add", ["rstd", "eps"], ["rstd_e"]),
        n("Abs", ["slope"], ["aslope"]),
        n("Mul", ["aslope", "window_len"], ["rise"]),
        n("Div", ["rise", "rstd_e"], ["trend"]),
        n("Add", ["trend", "one"], ["trend1"]),
        n("Log", ["trend1"], ["f5"]),
        n("Concat", ["f1", "f2", "f3", "f4", "f5"], ["feats"], axis=1),
        # standardise, MLP, sigmoid
        n("Sub", ["feats", "mu"], ["fc"]),
        n("Div", ["fc", "sigma"], ["fs"]),
        n("MatMul", ["fs", "w1"], ["h0"]),
        n("Add", ["h0", "b1"], ["h1"]),
        n("Relu", ["h1"], ["h"]),
        n("MatMul", ["h", "w2"], ["z0"]),
        n("Add", ["z0", "b2"], ["logit"]),
        n("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sensor_anomaly",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, [None, WINDOW])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onx.ir_version = 8
    _stamp(onx, "sensor fault score (stuck/spike/drift; trained on simulated data)")
    onnx.checker.check_model(onx)
    onnx.save(onx, out)

    test, test_labels = simulate_windows(6000, np.random.default_rng(SEED + 1))
    scores = _run(out, test)[:, 0]
    expected = mlp.predict_proba(scaler.transform(window_features(test)))[:, 1]
    max_diff = float(np.max(np.abs(scores - expected)))
    if max_diff > 1e-3:
        raise SystemExit(f"ONNX graph disagrees with the trained model by {max_diff}")
    return {"auc": float(roc_auc_score(test_labels, scores)), "graph_vs_sklearn": max_diff}


# --------------------------------------------------------------------------- helpers


def _stamp(model: Any, doc: str) -> None:
    model.producer_name = "climastream.edge.models.build_models"
    model.producer_version = "1"
    model.doc_string = doc


def _run(path: Path, rows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: rows})[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in (
        ("pm_humidity_correction.onnx", build_humidity),
        ("sensor_anomaly.onnx", build_anomaly),
    ):
        path = args.out / name
        quality = build(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        summary = " ".join(f"{k}={v:.4f}" for k, v in quality.items())
        print(f"{name} sha256:{digest} {path.stat().st_size} bytes {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
