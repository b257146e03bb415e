"""Train fraudstream's fraud model and write everything the Rust services need.

Outputs (all committed, all reproducible from the seed):
  fraud_model.onnx   input `features` float[N, 12]; outputs `label`, `probabilities` float[N, 2]
                     and `contributions` float[N, 12] (coefficient x scaled value per feature)
  model_card.json    version, feature order, thresholds, degraded-mode defaults, scaler and
                     coefficients, PSI reference bins, holdout metrics
  golden/*.json      sklearn outputs and numpy PSI / sklearn metrics on fixed inputs, for the
                     Rust parity tests

Usage: python model/train.py [--out model/] [--model-version V --C C --review R --block B]
       (a candidate for `scorer replay`: its own directory, version, regularization, thresholds)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score, confusion_matrix
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

SEED = 20261125
N_ROWS = 200_000
FRAUD_RATE = 0.03
MODEL_VERSION = "1.0.0"
REVIEW_THRESHOLD = 0.3
BLOCK_THRESHOLD = 0.7
PSI_BINS = 10
PSI_EPSILON = 1e-4

PAYMENT_METHODS = ["card", "bank_transfer", "wallet", "crypto"]
COUNTRIES = ["US", "GB", "DE", "FR", "NL", "ES", "IT", "CA", "BR", "IN"]

# The model's input, in order. `source` says where the Rust feature builder takes it from.
FEATURES = [
    ("amount_log", "ln(1 + amount)"),
    ("amount_ratio_log", "ln((1 + amount) / (1 + avg_amount_30d))"),
    ("is_night", "1 when the transaction's UTC hour is 0-5"),
    ("is_cross_border", "1 when the transaction's country differs from the user's home country"),
    ("account_age_log", "ln(1 + account_age_days)"),
    ("txn_count_1h", "user's transactions in the last hour"),
    ("txn_count_24h", "user's transactions in the last 24 hours"),
    ("chargebacks_90d", "user's chargebacks in the last 90 days"),
    ("pm_card", "1 when payment_method is card"),
    ("pm_bank_transfer", "1 when payment_method is bank_transfer"),
    ("pm_wallet", "1 when payment_method is wallet"),
    ("pm_crypto", "1 when payment_method is crypto"),
]
FEATURE_NAMES = [name for name, _ in FEATURES]
# One-hot columns are monitored through their categorical source instead.
DERIVED_FROM_CATEGORICAL = {"pm_card", "pm_bank_transfer", "pm_wallet", "pm_crypto"}

# What the feature store holds per user (a Redis hash).
USER_FEATURES = ["account_age_days", "txn_count_1h", "txn_count_24h", "avg_amount_30d", "chargebacks_90d", "home_country"]


def generate(rng: np.random.Generator, n: int, fraud_rate: float) -> dict[str, np.ndarray]:
    """Synthetic payments: per-user history plus the transaction, with fraud patterns in amount,
    velocity, account age, hour of day, cross-border use and payment method."""
    is_fraud = rng.random(n) < fraud_rate
    f = is_fraud

    account_age_days = np.where(
        f,
        np.where(rng.random(n) < 0.45, rng.exponential(40.0, n), rng.lognormal(5.8, 1.0, n)),
        rng.lognormal(6.0, 0.9, n),
    ).round()
    txn_count_1h = np.where(f, rng.poisson(1.3, n), rng.poisson(0.4, n))
    txn_count_24h = txn_count_1h + np.where(f, rng.poisson(5.0, n), rng.poisson(3.0, n))
    avg_amount_30d = np.round(rng.lognormal(4.0, 0.8, n), 2)
    chargebacks_90d = np.where(f, rng.poisson(0.25, n), rng.poisson(0.03, n))
    home_country = rng.choice(COUNTRIES, n, p=[0.4, 0.12, 0.1, 0.08, 0.05, 0.05, 0.05, 0.06, 0.05, 0.04])

    spend_factor = np.where(f, rng.lognormal(0.7, 0.9, n), rng.lognormal(0.0, 0.6, n))
    amount = np.clip(np.round(avg_amount_30d * spend_factor, 2), 0.5, 1_000_000.0)

    day_hours = rng.choice(24, n, p=_hour_profile(night_weight=1.0))
    night_hours = rng.choice(24, n, p=_hour_profile(night_weight=3.0))
    hour = np.where(f, night_hours, day_hours)

    cross_border = rng.random(n) < np.where(f, 0.25, 0.07)
    other_country = rng.choice(COUNTRIES, n)
    country = np.where(cross_border & (other_country != home_country), other_country, home_country)

    pm_legit = rng.choice(4, n, p=[0.62, 0.2, 0.16, 0.02])
    pm_fraud = rng.choice(4, n, p=[0.55, 0.08, 0.22, 0.15])
    payment_method = np.where(f, pm_fraud, pm_legit)

    return {
        "is_fraud": is_fraud.astype(np.int64),
        "amount": amount,
        "hour": hour,
        "country": country,
        "payment_method": payment_method,
        "account_age_days": account_age_days,
        "txn_count_1h": txn_count_1h.astype(np.float64),
        "txn_count_24h": txn_count_24h.astype(np.float64),
        "avg_amount_30d": avg_amount_30d,
        "chargebacks_90d": chargebacks_90d.astype(np.float64),
        "home_country": home_country,
    }


def _hour_profile(night_weight: float) -> np.ndarray:
    w = np.array([night_weight if h < 6 else (1.5 if 9 <= h <= 21 else 1.0) for h in range(24)])
    return w / w.sum()


def feature_matrix(d: dict[str, np.ndarray]) -> np.ndarray:
    """The same arithmetic as the Rust feature builder (scorer/src/features.rs)."""
    pm = d["payment_method"]
    cols = [
        np.log1p(d["amount"]),
        np.log((1.0 + d["amount"]) / (1.0 + d["avg_amount_30d"])),
        (d["hour"] < 6).astype(np.float64),
        (d["country"] != d["home_country"]).astype(np.float64),
        np.log1p(d["account_age_days"]),
        d["txn_count_1h"],
        d["txn_count_24h"],
        d["chargebacks_90d"],
        *[(pm == i).astype(np.float64) for i in range(4)],
    ]
    # float32 is what the ONNX model takes; round-trip here so that sklearn sees the same values.
    return np.column_stack(cols).astype(np.float32).astype(np.float64)


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Right-closed bins: (-inf, e1], (e1, e2], ..., (e_{k-1}, inf)."""
    return np.searchsorted(edges, values, side="left")


def numeric_reference(values: np.ndarray) -> dict:
    qs = np.quantile(values, np.linspace(0, 1, PSI_BINS + 1)[1:-1])
    # Cut points at or above the maximum would only add bins that training never filled.
    edges = np.unique(qs)
    edges = edges[edges < values.max()]
    counts = np.bincount(bin_index(values, edges), minlength=len(edges) + 1)
    return {"kind": "numeric", "edges": edges.tolist(), "expected": (counts / counts.sum()).tolist()}


def categorical_reference(values: np.ndarray, categories: list[str]) -> dict:
    counts = np.array([(values == c).sum() for c in categories], dtype=np.float64)
    return {
        "kind": "categorical",
        "categories": categories,
        "expected": (counts / counts.sum()).tolist() + [0.0],  # last: the `__unseen__` bucket
    }


def psi(expected: np.ndarray, actual_counts: np.ndarray) -> float:
    """PSI with empty proportions replaced by epsilon (as Evidently does)."""
    actual = actual_counts / actual_counts.sum()
    e = np.where(expected == 0, PSI_EPSILON, expected)
    a = np.where(actual == 0, PSI_EPSILON, actual)
    return float(np.sum((a - e) * np.log(a / e)))


def to_onnx(pipe: Pipeline, k: int, version: str) -> onnx.ModelProto:
    model = convert_sklearn(
        pipe,
        initial_types=[("features", FloatTensorType([None, k]))],
        options={id(pipe.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    graph = model.graph
    scaler = next(n for n in graph.node if n.op_type == "Scaler")
    coef = pipe.named_steps["clf"].coef_[0].astype(np.float32).reshape(1, k)
    graph.initializer.append(numpy_helper.from_array(coef, name="contribution_coefficients"))
    graph.node.append(
        helper.make_node("Mul", [scaler.output[0], "contribution_coefficients"], ["contributions"], name="Contributions")
    )
    graph.output.append(helper.make_tensor_value_info("contributions", onnx.TensorProto.FLOAT, [None, k]))
    graph.name = "fraudstream_fraud_model"  # skl2onnx names it with a random uuid
    model.producer_name = "fraudstream-train"
    model.doc_string = f"fraudstream fraud model {version}"
    onnx.checker.check_model(model)
    return model


def metrics_at(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "threshold": threshold,
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "false_positive_rate": float(fp / (fp + tn)) if fp + tn else 0.0,
        "tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    # A candidate for `scorer replay`: its own version, regularization and thresholds.
    parser.add_argument("--model-version", default=MODEL_VERSION)
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularization strength")
    parser.add_argument("--review", type=float, default=REVIEW_THRESHOLD, help="review threshold")
    parser.add_argument("--block", type=float, default=BLOCK_THRESHOLD, help="block threshold")
    args = parser.parse_args()
    if not 0 < args.review <= args.block <= 1:
        parser.error("thresholds must satisfy 0 < --review <= --block <= 1")
    out: Path = args.out
    version, review, block = args.model_version, args.review, args.block
    (out / "golden").mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(SEED)
    data = generate(rng, N_ROWS, FRAUD_RATE)
    X = feature_matrix(data)
    y = data["is_fraud"]
    idx_train, idx_test = train_test_split(np.arange(N_ROWS), test_size=0.25, random_state=SEED, stratify=y)

    pipe = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(C=args.C, max_iter=1000))])
    pipe.fit(X[idx_train], y[idx_train])
    clf = pipe.named_steps["clf"]
    scaler = pipe.named_steps["scaler"]

    p_test = pipe.predict_proba(X[idx_test])[:, 1]
    holdout = {
        "rows": int(len(idx_test)),
        "fraud_rate": float(y[idx_test].mean()),
        "auc": float(roc_auc_score(y[idx_test], p_test)),
        "at_review": metrics_at(y[idx_test], p_test, review),
        "at_block": metrics_at(y[idx_test], p_test, block),
    }

    model = to_onnx(pipe, X.shape[1], version)
    onnx.save(model, out / "fraud_model.onnx")

    train = {k: v[idx_train] for k, v in data.items()}
    Xtr = X[idx_train]
    reference = {}
    for j, name in enumerate(FEATURE_NAMES):
        if name not in DERIVED_FROM_CATEGORICAL:
            reference[name] = numeric_reference(Xtr[:, j])
    reference["payment_method"] = categorical_reference(
        np.array(PAYMENT_METHODS)[train["payment_method"]], PAYMENT_METHODS
    )

    defaults = {
        "account_age_days": float(np.median(train["account_age_days"])),
        "txn_count_1h": float(np.median(train["txn_count_1h"])),
        "txn_count_24h": float(np.median(train["txn_count_24h"])),
        "avg_amount_30d": float(np.round(np.median(train["avg_amount_30d"]), 2)),
        "chargebacks_90d": float(np.median(train["chargebacks_90d"])),
    }

    card = {
        "model_name": "fraud-logistic-regression",
        "model_version": version,
        "onnx_file": "fraud_model.onnx",
        "onnx_input": "features",
        "onnx_outputs": {"probabilities": "probabilities", "contributions": "contributions"},
        "features": [{"name": n, "description": d} for n, d in FEATURES],
        "user_features": USER_FEATURES,
        "default_user_features": defaults,
        "thresholds": {"review": review, "block": block},
        "scaler": {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()},
        "coefficients": clf.coef_[0].tolist(),
        "intercept": float(clf.intercept_[0]),
        "psi": {"bins": PSI_BINS, "epsilon": PSI_EPSILON, "reference": reference},
        "training": {
            "seed": SEED,
            "rows": int(len(idx_train)),
            "fraud_rate": float(y[idx_train].mean()),
            "generator": "model/train.py",
            "sklearn_pipeline": f"StandardScaler -> LogisticRegression(C={args.C})",
        },
        "holdout": holdout,
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")

    # Golden: sklearn's outputs on fixed holdout rows (every fraud in the first slice included).
    g_idx = np.concatenate([idx_test[y[idx_test] == 1][:60], idx_test[y[idx_test] == 0][:140]])
    Xg = X[g_idx]
    scaled = scaler.transform(Xg)
    golden = {
        "model_version": version,
        "features": FEATURE_NAMES,
        "rows": [
            {
                "input": Xg[i].tolist(),
                "probability": float(pipe.predict_proba(Xg[i : i + 1])[0, 1]),
                "logit": float(pipe.decision_function(Xg[i : i + 1])[0]),
                "contributions": (clf.coef_[0] * scaled[i]).tolist(),
                "transaction": {
                    "amount": float(data["amount"][g]),
                    # Any day will do: only the UTC hour matters to the features.
                    "timestamp": int(1_750_000_000_000 // 86_400_000 * 86_400_000 + int(data["hour"][g]) * 3_600_000 + 1234),
                    "country": str(data["country"][g]),
                    "payment_method": PAYMENT_METHODS[int(data["payment_method"][g])],
                },
                "user": {
                    "account_age_days": float(data["account_age_days"][g]),
                    "txn_count_1h": float(data["txn_count_1h"][g]),
                    "txn_count_24h": float(data["txn_count_24h"][g]),
                    "avg_amount_30d": float(data["avg_amount_30d"][g]),
                    "chargebacks_90d": float(data["chargebacks_90d"][g]),
                    "home_country": str(data["home_country"][g]),
                },
            }
            for i, g in enumerate(g_idx)
        ],
    }
    (out / "golden" / "predictions.json").write_text(json.dumps(golden) + "\n")

    write_drift_golden(out, rng, reference, card)
    check_onnx_runtime(out, Xg, golden)
    print(json.dumps({"model_version": version, "holdout": holdout}, indent=2))


def write_drift_golden(out: Path, rng: np.random.Generator, reference: dict, card: dict) -> None:
    """PSI computed by numpy, and precision/recall/F1 by sklearn, on fixed data the Rust code
    must reproduce."""
    cases = []
    amount_ref = reference["amount_log"]
    edges = np.array(amount_ref["edges"])
    for label, values in [
        ("same_distribution", rng.normal(np.mean(edges), np.std(edges), 5000)),
        ("shifted_up", rng.normal(np.mean(edges) + 1.5, np.std(edges), 5000)),
        ("all_in_one_bin", np.full(700, edges[0] - 1.0)),
    ]:
        counts = np.bincount(bin_index(values, edges), minlength=len(edges) + 1)
        cases.append({
            "name": label, "feature": "amount_log", "values": values.tolist(),
            "counts": counts.tolist(), "psi": psi(np.array(amount_ref["expected"]), counts),
        })
    pm_ref = reference["payment_method"]
    for label, values in [
        ("payment_mix_shift", ["crypto"] * 300 + ["card"] * 500 + ["wallet"] * 200),
        ("with_unseen", ["card"] * 600 + ["bank_transfer"] * 200 + ["voucher"] * 200),
    ]:
        cats = pm_ref["categories"]
        counts = np.array([values.count(c) for c in cats] + [sum(v not in cats for v in values)])
        cases.append({
            "name": label, "feature": "payment_method", "values": values,
            "counts": counts.tolist(), "psi": psi(np.array(pm_ref["expected"]), counts),
        })

    n = 2000
    y_true = (rng.random(n) < 0.1).astype(np.int64)
    prob = np.clip(np.where(y_true == 1, rng.beta(4, 2, n), rng.beta(1.5, 6, n)), 0, 1)
    quality = {
        "thresholds": card["thresholds"],
        "is_fraud": y_true.tolist(),
        "probability": prob.tolist(),
        "at_review": metrics_at(y_true, prob, card["thresholds"]["review"]),
        "at_block": metrics_at(y_true, prob, card["thresholds"]["block"]),
    }
    (out / "golden" / "drift.json").write_text(json.dumps({"epsilon": PSI_EPSILON, "psi": cases, "quality": quality}) + "\n")


def check_onnx_runtime(out: Path, Xg: np.ndarray, golden: dict) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "fraud_model.onnx"), providers=["CPUExecutionProvider"])
    probs, contribs = sess.run(["probabilities", "contributions"], {"features": Xg.astype(np.float32)})
    want = np.array([r["probability"] for r in golden["rows"]])
    assert np.max(np.abs(probs[:, 1] - want)) < 1e-5, np.max(np.abs(probs[:, 1] - want))
    want_c = np.array([r["contributions"] for r in golden["rows"]])
    assert np.max(np.abs(contribs - want_c)) < 1e-4, np.max(np.abs(contribs - want_c))


if __name__ == "__main__":
    main()
