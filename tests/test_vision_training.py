"""course_lib.vision_training (chapter 10): the shipped digit ResNet and ViT are real Hub models (transformers
loads them with the same logits and the same preprocessing), and results.json is what the shipped weights give
(accuracy, confusion matrix, errors, int8 accuracy and bytes), recomputed here."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from course_lib import image_data, load_model
from course_lib.assets import asset_path
from course_lib.quantization import QuantConv2d, QuantLinear
from course_lib.timing import torch_threads
from course_lib import vision_training as VT

transformers = pytest.importorskip("transformers")

HF_CLASSES = {"resnet": "ResNetForImageClassification", "vit": "ViTForImageClassification"}


@pytest.fixture(scope="module")
def results():
    return VT.read_results()


@pytest.fixture(scope="module")
def test_batches():
    return image_data.eval_batches(image_data.load_split("test"))


@pytest.mark.parametrize("kind", VT.MODELS)
def test_the_shipped_model_loads_in_transformers_with_identical_logits(kind, test_batches):
    folder = asset_path(VT.ASSETS[kind])
    theirs = getattr(transformers, HF_CLASSES[kind]).from_pretrained(folder).eval()
    ours = load_model(folder)
    x = test_batches[0]["pixel_values"][:64]
    with torch.no_grad():
        diff = (theirs(pixel_values=x).logits - ours(x)).abs().max().item()
    assert diff <= 1e-4
    assert theirs.config.id2label == image_data.ID2LABEL and theirs.config.label2id == image_data.LABEL2ID
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == kind and saved["architectures"] == [HF_CLASSES[kind]]
    assert saved["id2label"] == {str(i): str(i) for i in range(10)}


def test_transformers_image_processor_reads_the_shipped_preprocessor_config_the_same_way():
    split = image_data.load_split("test")
    for kind in VT.MODELS:
        folder = asset_path(VT.ASSETS[kind])
        processor = transformers.ViTImageProcessorPil.from_pretrained(folder)
        theirs = processor(split.pictures()[:50], return_tensors="pt")["pixel_values"]
        assert torch.equal(theirs, image_data.pixel_values(split, folder, range(50)))
        assert json.loads((folder / "preprocessor_config.json").read_text()) == \
            json.loads(json.dumps(image_data.DIGITS_PREPROCESSOR))


@pytest.mark.parametrize("kind", VT.MODELS)
def test_test_scores_and_int8_recomputed_from_the_shipped_weights_equal_results_json(kind, results):
    recorded = results["models"][kind]
    folder = asset_path(VT.ASSETS[kind])
    f32 = VT.measure_folder(folder, None)
    for key in ("accuracy", "confusion_matrix", "misclassified", "predicted"):
        assert f32[key] == recorded["test"][key], key
    assert f32["accuracy"] == recorded["float32"]["test_accuracy"]
    assert f32["weight_bytes"] == recorded["float32"]["weight_bytes"]
    assert (folder / "model.safetensors").stat().st_size == recorded["float32"]["file_bytes"]
    i8 = VT.measure_folder(folder, "int8")
    assert i8["accuracy"] == recorded["int8"]["test_accuracy"]
    assert i8["misclassified"] == recorded["int8"]["misclassified"]
    assert i8["weight_bytes"] == recorded["int8"]["weight_bytes"]
    assert i8["weight_bytes"] / f32["weight_bytes"] == pytest.approx(recorded["int8"]["bytes_ratio"], abs=1e-4)
    assert (i8["test_logits"] - f32["test_logits"]).abs().max().item() == \
        pytest.approx(recorded["int8"]["max_abs_logit_diff"], rel=1e-3, abs=1e-5)


def test_int8_quantizes_the_resnets_convolutions_so_its_bytes_shrink(results):
    resnet = load_model("digits-resnet", quantize="int8")
    convs = [m for m in resnet.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 9  # stem + 2 per basic block x 3 + 2 projection shortcuts
    assert isinstance(resnet.classifier[1], QuantLinear)
    assert results["models"]["resnet"]["int8"]["bytes_ratio"] < 0.30  # float32 -> int8 filters: about a quarter
    vit = load_model("digits-vit", quantize="int8")
    assert sum(isinstance(m, QuantLinear) for m in vit.modules()) == 2 * 6 + 1  # q, k, v, out, fc1, fc2 x 2 + head
    for kind in VT.MODELS:  # measured: int8 loses no test digit on either model
        measured = results["models"][kind]
        assert measured["int8"]["test_accuracy"] >= measured["float32"]["test_accuracy"] - 0.01


def test_the_two_models_have_about_equal_parameters_and_the_same_budget(results):
    counts = {kind: VT.build_model(kind).num_parameters() for kind in VT.MODELS}
    assert counts == {kind: results["models"][kind]["parameters"] for kind in VT.MODELS}
    assert all(50_000 <= n <= 100_000 for n in counts.values())
    assert abs(counts["resnet"] - counts["vit"]) / max(counts.values()) < 0.05
    settings = {kind: results["models"][kind]["settings"] for kind in VT.MODELS}
    assert settings == {kind: VT.SETTINGS[kind].as_dict() for kind in VT.MODELS}  # the code's settings
    same = lambda s: {k: v for k, v in s.items() if k != "lr"}  # noqa: E731 - only the peak lr differs
    assert same(settings["resnet"]) == same(settings["vit"])
    for kind in VT.MODELS:
        log = json.loads((asset_path(VT.ASSETS[kind]) / "training_log.json").read_text())
        history = log["history"]
        assert len(history["step"]) == results["models"][kind]["steps"] == VT.SETTINGS[kind].steps
        assert history["best_step"] == results["models"][kind]["best_step"]
        assert history["best_value"] == pytest.approx(results["models"][kind]["validation"]["accuracy"])
        assert history["loss"][-1] < 0.2 * history["loss"][0]  # it learned
        readme = (asset_path(VT.ASSETS[kind]) / "README.md").read_text()
        assert "CC BY 4.0" in readme and f"{results['models'][kind]['parameters']:,} parameters" in readme


def test_results_json_records_the_data_and_the_environment(results):
    data = results["data"]
    assert data["sha256"] == image_data.DIGITS_SHA256 and data["split_sha256"] == image_data.SPLIT_SHA256
    assert data["sizes"] == image_data.SPLIT_SIZES
    assert data["test_indices"] == image_data.load_split("test").indices.tolist()
    env = results["environment"]
    assert env["torch"].split("+")[0].count(".") == 2 and env["threads"] >= 1 and env["cpu"]
    table = VT.results_table(results)
    assert "resnet" in table and "vit" in table and "79,962" in table


def test_check_results_rejects_broken_files(results, tmp_path):
    def broken(change):
        bad = copy.deepcopy(results)
        change(bad)
        return bad

    cases = [
        (lambda r: r.pop("models"), "no key 'models'"),
        (lambda r: r.__setitem__("schema_version", 2), "schema_version"),
        (lambda r: r["data"].__setitem__("sha256", "0" * 64), "other data"),
        (lambda r: r["models"]["vit"]["test"]["confusion_matrix"][0].__setitem__(0, 0), "counts .* digits"),
        (lambda r: r["models"]["resnet"]["test"].__setitem__("accuracy", 0.5), "disagrees"),
        (lambda r: r["models"]["resnet"]["test"]["misclassified"].append(3), "misclassified"),
        (lambda r: r["models"]["resnet"]["int8"].__setitem__("test_accuracy", 1.5), "not in \\[0, 1\\]"),
        (lambda r: r["models"].pop("vit"), "models should be"),
        (lambda r: r["environment"].__setitem__("threads", "2"), "should be int"),
    ]
    for change, message in cases:
        with pytest.raises(VT.ResultsError, match=message):
            VT.check_results(broken(change))
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(VT.ResultsError, match="rerun"):
        VT.read_results(path)


def test_training_is_seeded_and_learns(tmp_path):
    """A short run of the real training code: the same seed gives the same history and weights; the loss falls."""
    splits = image_data.digits_splits()
    v = splits["validation"]
    small = {"train": splits["train"], "validation": image_data.ImageSplit("validation", v.images[:64], v.labels[:64],
                                                                            v.indices[:64])}
    settings = VT.TrainSettings(steps=12, batch_size=32, warmup_steps=2, eval_every=6, lr=3e-3)
    with torch_threads(1):  # one thread: two on a busy 2-core machine run several times slower
        first, history = VT.train_model("resnet", settings, small, progress=False)
        again, history_again = VT.train_model("resnet", settings, small, progress=False)
    assert history["loss"] == history_again["loss"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert sum(history["loss"][-3:]) < sum(history["loss"][:3])
    assert history["eval_step"] == [6, 12] and set(history["eval"]) == {"accuracy", "loss"}
    folder = VT.save_model("resnet", first, tmp_path / "digits-resnet", settings, history,
                           {"accuracy": 0.5})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                        "preprocessor_config.json", "training_log.json"]
    reloaded = load_model(folder)
    x = image_data.eval_batches(splits["validation"], folder, batch_size=8)[0]["pixel_values"]
    with torch.no_grad():
        assert torch.equal(reloaded(x), first(x))


def test_unknown_model_kind():
    with pytest.raises(ValueError, match="unknown model 'convnext'"):
        VT.build_model("convnext")
