"""The evaluate command and its metrics (issue 18), with tiny stand-in feature extractors behind the real
interfaces: identical images score best, shuffled views score worse on consistency, another identity
scores lower, FID of a set against itself is ~0; the Fréchet distance and KID against independent formulas;
a missing model gives "n/a (why)"; the real CLIP and depth adapters on tiny random transformers models."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffstyle360_core.cli import evaluate as E
from diffstyle360_core.cli.main import main
from diffstyle360_core.evaluation import extractors as X
from diffstyle360_core.evaluation import report as R
from diffstyle360_core.evaluation import stats as S

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "workflows" / "images"
FACE = IMAGES / "astronaut.png"


# --------------------------------------------------------------------------- #
# stand-ins behind the interfaces
# --------------------------------------------------------------------------- #
def _small(im, size=8):
    return np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float64).ravel()


def features(images):  # ImageFeatures: [N, 64] (stands in for CLIP and Inception)
    return np.stack([_small(im) - 128.0 for im in images])


def faces(images):  # FaceEmbedder: no face in a flat image, else a coarse centre-crop embedding
    out = []
    for im in images:
        a = np.asarray(im.convert("L"), dtype=np.float64)
        if a.std() < 1.0:
            out.append(None)
            continue
        w, h = im.size
        out.append(_small(im.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4))) - 128.0)
    return out


def depths(images):  # DepthModel: brightness as "depth"
    return [np.asarray(im.convert("L"), dtype=np.float64) for im in images]


def pair_scorer(pairs):  # PairScorer: mean absolute difference in [0, 1]
    return [float(np.abs(_small(a, 32) - _small(b, 32)).mean() / 255.0) for a, b in pairs]


STAND_INS = R.Backends(clip=lambda: features, inception=lambda: features, face=lambda: faces,
                       depth=lambda: depths, met3r=lambda: pair_scorer)


def _turntable(folder: Path, source: Path, n: int = 8, step: int = 6, size: int = 64) -> list:
    """n views of a slowly sliding image: neighbours alike, like a turntable."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(source).convert("RGB").resize((size + n * step, size))
    paths = []
    for i in range(n):
        path = folder / f"view_{i:03d}.png"
        base.crop((i * step, 0, i * step + size, size)).save(path)
        paths.append(path)
    return paths


def _job(name, views, *, style=IMAGES / "style_ink.png", content=FACE, yaws=None, label="ink"):
    return R.RunJob(name=name, style=label, views=list(views), yaws=yaws or [0.0] * len(views), content=content,
                    styles=[style] if style else [], references=[None] * len(views))


# --------------------------------------------------------------------------- #
# the arithmetic
# --------------------------------------------------------------------------- #
def test_frechet_distance_matches_closed_forms_and_an_independent_eigen_route():
    # 1-D: (m1-m2)^2 + (s1 - s2)^2 with s the standard deviations
    assert S.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + (2.0 - 3.0) ** 2, abs=1e-12)
    # diagonal covariances: ||mu1-mu2||^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.25, 0.5])
    expected = 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert S.frechet_distance([0, 0, 1], np.diag(a), [0, 0, 0], np.diag(b)) == pytest.approx(expected, abs=1e-12)
    # general SPD: Tr((S1 S2)^1/2) as the sum of square roots of the (real, positive) eigenvalues of S1 @ S2
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(5), m2 @ m2.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    tr = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))
    independent = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr
    assert S.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(independent, rel=1e-10)
    assert S.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(S.frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift_even_when_n_is_below_d():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 64))  # N < D: rank-deficient covariances stay real
    assert S.fid(x, x) == pytest.approx(0.0, abs=1e-8)
    assert 0 < S.fid(x, x + 0.5) < S.fid(x, x + 1.0)
    assert S.fid(x, x + 1.0) == pytest.approx(64 * 1.0, rel=1e-6)  # a pure shift adds ||shift||^2


def test_kid_is_the_unbiased_mmd_of_a_naive_double_loop_and_separates_shifted_sets():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / (7 * 5)
    assert S.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    same, _ = S.kid(a, b, subset_size=100, subsets=20)
    shifted, _ = S.kid(a, b + 1.0, subset_size=100, subsets=20)
    assert abs(same) < 0.05 < shifted


def test_depth_error_ignores_scale_and_shift_and_loop_pairs_close_the_loop():
    rng = np.random.default_rng(3)
    d = rng.random((16, 16))
    assert S.depth_pair_error(d, d) == pytest.approx(0.0, abs=1e-20)
    assert S.depth_pair_error(d, 3.0 * d + 7.0) == pytest.approx(0.0, abs=1e-20)
    assert S.depth_pair_error(d, rng.random((16, 16))) > 0.01
    assert S.loop_pairs(4) == [(0, 1), (1, 2), (2, 3), (3, 0)] and S.loop_pairs(1) == []


# --------------------------------------------------------------------------- #
# what each metric must do (stand-ins)
# --------------------------------------------------------------------------- #
def test_identical_images_score_best_on_style_and_identity(tmp_path):
    style = IMAGES / "style_ink.png"
    copies = []
    for i in range(3):
        copies.append(tmp_path / f"s{i}.png")
        Image.open(style).convert("RGB").save(copies[-1])
    other = _turntable(tmp_path / "faces", FACE, n=3, step=0)
    as_style = R.clip_style(_job("a", copies), features)
    as_face = R.clip_style(_job("b", other), features)
    assert as_style == pytest.approx(1.0, abs=1e-12) and as_face < as_style
    portraits = []
    for i in range(2):
        portraits.append(tmp_path / f"p{i}.png")
        Image.open(FACE).convert("RGB").save(portraits[-1])
    same = R.identity(_job("c", portraits), faces, 60.0)
    assert same["identity"] == pytest.approx(1.0, abs=1e-12) and same["face_rate"] == 1.0
    assert R.identity(_job("d", other), faces, 60.0)["identity"] < same["identity"]


def test_another_identity_scores_lower_and_faceless_or_back_views_follow_the_stated_rule(tmp_path):
    own = _turntable(tmp_path / "own", FACE, n=4, step=2)
    stranger = _turntable(tmp_path / "stranger", IMAGES / "style_posterized.png", n=4, step=2)
    mine = R.identity(_job("own", own), faces, 60.0)["identity"]
    theirs = R.identity(_job("stranger", stranger), faces, 60.0)["identity"]
    assert theirs < mine
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank)
    views = own[:2] + [blank, own[3]]
    result = R.identity(_job("mixed", views, yaws=[0.0, 30.0, 350.0, 180.0]), faces, 60.0)
    assert result["face_rate"] == pytest.approx(2 / 3)  # 180° is excluded; the blank view is a miss
    assert result["identity"] == pytest.approx(
        np.mean(S.cosine(np.stack(faces([Image.open(p) for p in own[:2]])), faces([Image.open(FACE)])[0])))


def test_identity_against_ground_truth_views_takes_its_valid_views_from_the_ground_truth(tmp_path):
    views = _turntable(tmp_path / "v", FACE, n=4, step=2)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(blank)
    job = _job("j", views[:3] + [blank], yaws=[0.0, 20.0, 40.0, 50.0])
    job.ground_truth = [views[0], views[1], blank, views[3]]  # view 2's ground truth has no face: not counted
    result = R.identity_vs_ground_truth(job, faces, 60.0)
    assert result["face_rate"] == pytest.approx(2 / 3)  # view 3 (blank) lost its face: a miss
    assert result["identity"] == pytest.approx(1.0, abs=1e-12)  # views 0 and 1 equal their ground truth
    job.ground_truth = [views[1], views[0], None, None]
    assert R.identity_vs_ground_truth(job, faces, 60.0)["identity"] < 1.0


def test_shuffled_views_score_worse_on_view_consistency(tmp_path):
    views = _turntable(tmp_path / "tt", FACE, n=8, step=6)
    shuffled = [views[i] for i in (0, 4, 1, 6, 2, 7, 3, 5)]
    assert R.depth_consistency(_job("s", shuffled), depths) > R.depth_consistency(_job("o", views), depths)
    assert R.met3r(_job("s", shuffled), pair_scorer) > R.met3r(_job("o", views), pair_scorer)
    same = [views[0]] * 4
    assert R.depth_consistency(_job("same", same), depths) == pytest.approx(0.0, abs=1e-20)
    job = _job("gt", views)
    job.ground_truth = list(views)  # the views are their own ground truth: ΔD 0
    assert R.depth_vs_ground_truth(job, depths) == pytest.approx(0.0, abs=1e-20)
    job.ground_truth = shuffled
    assert R.depth_vs_ground_truth(job, depths) > 1e-3
    assert R.met3r(_job("same", same), pair_scorer) == 0.0


def test_report_pools_fid_per_run_gives_per_style_stats_and_refuses_unequal_n(tmp_path):
    ink = [_job(f"ink{i}", _turntable(tmp_path / f"ink{i}", FACE, n=4, step=3 + i)) for i in range(2)]
    poster = [_job("poster0", _turntable(tmp_path / "p0", IMAGES / "style_posterized.png", n=4),
                   style=IMAGES / "style_posterized.png", label="posterized")]
    jobs = ink + poster
    reference = [v for j in jobs for v in j.views]
    report = R.evaluate({"ours": jobs}, STAND_INS, R.Settings(kid_subsets=5), reference=reference,
                        ground_truth=True)
    summary = report["summary"]["ours"]
    assert list(summary) == ["ink", "posterized", "all styles"]
    assert summary["ink"]["jobs"] == 2 and summary["all styles"]["views"] == 12
    assert summary["all styles"]["fid"]["mean"] == pytest.approx(0.0, abs=1e-6)  # the set against itself
    per_job = [report["jobs"]["ours"][f"ink{i}"]["clip_style"] for i in range(2)]
    assert summary["ink"]["clip_style"]["mean"] == pytest.approx(np.mean(per_job))
    assert summary["ink"]["clip_style"]["std"] == pytest.approx(np.std(per_job))
    assert all(c["unavailable"] is None for c in report["columns"].values())
    table = R.to_markdown(report)
    assert "| ours | **all styles** | 3 | 12 |" in table and "- **FID ↓** — Fréchet distance" in table

    other = R.evaluate({"a": jobs, "b": jobs[:2]}, STAND_INS, R.Settings(kid_subsets=5), reference=reference)
    assert other["columns"]["fid"]["unavailable"].startswith("runs differ in N (a: 12, b: 8)")
    assert other["columns"]["kid"]["unavailable"] == other["columns"]["fid"]["unavailable"]
    assert other["summary"]["a"]["ink"]["identity"] is not None  # the other metrics are still computed


def test_a_missing_model_makes_its_column_na_with_the_reason(tmp_path):
    def missing():
        raise X.MetricUnavailable("insightface not installed; pip install -r requirements-eval.txt")

    jobs = [_job("j", _turntable(tmp_path / "j", FACE, n=3))]
    report = R.evaluate({"r": jobs}, R.Backends(clip=lambda: features, face=missing), R.Settings())
    columns = report["columns"]
    assert columns["identity"]["unavailable"].startswith("insightface not installed")
    assert columns["face_rate"]["unavailable"] == columns["identity"]["unavailable"]
    assert columns["fid"]["unavailable"] == "needs --reference" and columns["depth"]["unavailable"] == "not requested"
    assert report["summary"]["r"]["all styles"]["clip_style"] is not None
    table = R.to_markdown(report)
    assert "n/a (insightface not installed)" in table and "n/a here: insightface not installed" in table


# --------------------------------------------------------------------------- #
# the command
# --------------------------------------------------------------------------- #
def _fake_batch(root: Path) -> Path:
    """A batch output folder as `batch` writes it: jobs/<job>/ with views and a complete job.json."""
    for name, source, style in (("a__ink", FACE, "style_ink"), ("b__ink", FACE, "style_ink"),
                                ("a__poster", IMAGES / "style_posterized.png", "style_posterized")):
        folder = root / "jobs" / name
        views = _turntable(folder, source, n=4, step=4 if name.startswith("a") else 5)
        record = {"status": "done", "job": name, "content": str(FACE), "styles": [str(IMAGES / f"{style}.png")],
                  "alpha": None, "style_label": style, "yaws_deg": [0.0, 90.0, 180.0, 270.0],
                  "files": [v.name for v in views]}
        (folder / "job.json").write_text(json.dumps(record))
    (root / "jobs" / "unfinished").mkdir()  # no job.json: left out
    return root


def test_evaluate_command_writes_the_table_and_json_with_stand_ins(tmp_path, monkeypatch, capsys):
    runs = _fake_batch(tmp_path / "run")
    reference = tmp_path / "ref"
    for job in ("a__ink", "b__ink"):
        _turntable(reference / job, FACE, n=4, step=4)
    monkeypatch.setattr(E, "backends_from_args", lambda args: STAND_INS)
    out = tmp_path / "report" / "table.md"
    assert main(["evaluate", "--runs", str(runs), "--reference", str(reference), "--ground-truth", str(reference),
                 "--out", str(out), "--kid-subsets", "5"]) == 0
    table, data = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert table in capsys.readouterr().out
    assert "| run | style | jobs | views | ID ↑ |" in table and "| run | style_ink | 2 | 8 |" in table
    assert set(data["jobs"]["run"]) == {"a__ink", "b__ink", "a__poster"}
    assert data["jobs"]["run"]["a__ink"]["clip_ref"] == pytest.approx(1.0, abs=1e-9)  # identical to its reference
    assert data["jobs"]["run"]["a__poster"]["clip_ref"] is None  # no reference for this job
    assert data["jobs"]["run"]["a__ink"]["depth_gt"] == pytest.approx(0.0, abs=1e-12)
    assert data["jobs"]["run"]["b__ink"]["depth_gt"] > 0  # its views slide 5 px, its ground truth 4
    assert data["summary"]["run"]["all styles"]["fid"]["n"] == 12
    assert data["columns"]["identity"]["definition"].startswith("ArcFace cosine similarity")


def test_evaluate_command_without_models_gives_na_columns_and_no_download(tmp_path, monkeypatch, capsys):
    runs = _fake_batch(tmp_path / "run")

    def offline(module, package, hint=""):
        raise X.MetricUnavailable(f"{package} not installed (test)")

    monkeypatch.setattr(X, "_require", offline)
    assert main(["evaluate", "--runs", str(runs)]) == 0
    table = (runs / "report.md").read_text()
    for reason in ("n/a (insightface not installed (test))", "n/a (transformers not installed (test))",
                   "n/a (needs --reference)", "n/a (met3r not installed (test))", "n/a (needs --ground-truth"):
        assert reason in table
    capsys.readouterr()
    assert main(["evaluate", "--runs", str(tmp_path / "nowhere")]) == 2
    assert "has no jobs/ folder" in capsys.readouterr().err
    assert main(["evaluate", "--runs", str(runs), "--metrics", "clip,colour"]) == 2
    assert "--metrics: unknown ['colour']" in capsys.readouterr().err
    assert main(["evaluate", "--runs", str(runs), "--id-against", "ground-truth"]) == 2
    assert "--id-against ground-truth needs --ground-truth" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# the real adapters on tiny random transformers models (no download)
# --------------------------------------------------------------------------- #
def test_clip_and_depth_adapters_run_tiny_transformers_models():
    transformers = pytest.importorskip("transformers")
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=8))
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = [Image.open(FACE).convert("RGB"), Image.open(IMAGES / "style_ink.png").convert("RGB")]
    emb = X.CLIPImageFeatures(clip, processor, batch_size=1)(images)
    assert emb.shape == (2, 8) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)

    backbone = transformers.Dinov2Config(image_size=32, patch_size=16, hidden_size=4, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=8, out_features=["stage1", "stage2"],
                                         reshape_hidden_states=False)
    depth = transformers.DepthAnythingForDepthEstimation(transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_factors=[1, 0.5], neck_hidden_sizes=[2, 2], fusion_hidden_size=6,
        reassemble_hidden_size=4, head_hidden_size=2))
    dpt = transformers.DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=True,
                                         ensure_multiple_of=16, do_pad=False)
    maps = X.TransformersDepth(depth, dpt)([im.resize((48, 40)) for im in images])
    assert [m.shape for m in maps] == [(40, 48), (40, 48)] and all(np.isfinite(m).all() for m in maps)


def test_load_builds_each_adapter_from_its_own_transformers_classes(monkeypatch):
    """The shared ``load``: the subclass's model and processor classes, its default checkpoint, the device asked
    for, and an offline failure as a short MetricUnavailable (no download: from_pretrained is replaced)."""
    transformers = pytest.importorskip("transformers")
    import torch

    asked = []

    def fake(cls_name):
        def from_pretrained(name, **kwargs):
            asked.append((cls_name, name))
            if name == "offline/model":
                raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection")
            return torch.nn.Linear(2, 2)
        return from_pretrained

    for cls_name in ("CLIPModel", "CLIPImageProcessor", "AutoModelForDepthEstimation", "AutoImageProcessor"):
        monkeypatch.setattr(getattr(transformers, cls_name), "from_pretrained", fake(cls_name))

    clip = X.CLIPImageFeatures.load(device="cpu")
    assert asked == [("CLIPModel", X.CLIP_DEFAULT), ("CLIPImageProcessor", X.CLIP_DEFAULT)]
    assert isinstance(clip, X.CLIPImageFeatures) and clip.device == torch.device("cpu") and clip.batch_size == 32
    assert not clip.model.training

    asked.clear()
    depth = X.TransformersDepth.load("my/depth-model", "cpu")
    assert asked == [("AutoModelForDepthEstimation", "my/depth-model"), ("AutoImageProcessor", "my/depth-model")]
    assert isinstance(depth, X.TransformersDepth) and depth.device == torch.device("cpu")

    with pytest.raises(X.MetricUnavailable) as info:
        X.TransformersDepth.load("offline/model", "cpu")
    assert str(info.value) == "could not load offline/model; We couldn't connect to 'https://huggingface.co'."


def test_each_view_goes_through_each_model_once_per_job(tmp_path):
    """CLIP style and CLIP-to-reference read the same views, so do ΔD and ΔD-nb: one model pass per view and job,
    and the values are those of the metrics computed on their own."""
    views = _turntable(tmp_path / "j", FACE, n=4)
    truth = _turntable(tmp_path / "gt", FACE, n=4, step=7)
    job = R.RunJob(name="j", style="ink", views=views, yaws=[0.0] * 4, content=FACE, styles=[IMAGES / "style_ink.png"],
                   references=list(truth), ground_truth=list(truth))
    seen = {"clip": [], "depth": []}

    def counting(name, model):
        def run(images):
            seen[name].append(len(images))
            return model(images)
        return lambda: run

    report = R.evaluate({"r": [job]}, R.Backends(clip=counting("clip", features), depth=counting("depth", depths)),
                        R.Settings(), reference=list(truth), ground_truth=True)
    assert sum(seen["clip"]) == 4 + 1 + 4  # the views, the style, the references: each once
    assert sum(seen["depth"]) == 4 + 4  # the views once, the resized ground truth once
    values = report["jobs"]["r"]["j"]
    np.testing.assert_allclose(values["clip_style"], R.clip_style(job, features), rtol=1e-12)
    np.testing.assert_allclose(values["clip_ref"], R.clip_reference(job, features), rtol=1e-12)
    np.testing.assert_allclose(values["depth"], R.depth_consistency(job, depths), rtol=1e-12)
    np.testing.assert_allclose(values["depth_gt"], R.depth_vs_ground_truth(job, depths), rtol=1e-12)
