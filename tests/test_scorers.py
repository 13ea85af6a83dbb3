"""Scorers: the OCR score on hand-made strings, the CLIP-based scorers on the tiny CLIP against a
direct computation, and the missing-weights / missing-extra errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from soar_fast.config import EvalConfig
from soar_fast.eval.prompts import ocr_target
from soar_fast.eval.scorers import ScorerUnavailable, load_scorers, scorer_class
from soar_fast.eval.scorers.ocr import levenshtein, ocr_prompt_reward, ocr_reward
from tests.tolerances import assert_close

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------------ OCR

def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3 and levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2


def test_ocr_target_is_the_first_double_quoted_string():
    assert ocr_target('A sign that says "Open 24 Hours" next to "Exit"') == "Open 24 Hours"
    with pytest.raises(ValueError, match="double-quoted"):
        ocr_target("A sign that says 'single quotes'")
    with pytest.raises(ValueError):
        ocr_target('only one " quote')


@pytest.mark.parametrize("recognized, target, expected", [
    ("Open 24 Hours", "Open 24 Hours", 1.0),
    ("OPEN24HOURS", "open 24 hours", 1.0),          # case and spaces ignored
    ("Welcome! Open 24 Hours daily", "Open 24 Hours", 1.0),  # substring counts as exact
    ("hellp", "hello", 0.8),                        # one substitution in five characters
    ("helo", "hello", 0.8),                         # one deletion
    ("", "hello", 0.0),                             # nothing recognised
    ("a much longer unrelated text", "hi", 0.0),   # distance clamped at |target|
    ("SOAR fast", "soarfest", 1 - 1 / 8),
])
def test_ocr_reward(recognized, target, expected):
    assert ocr_reward(recognized, target) == pytest.approx(expected)


def test_ocr_prompt_reward_uses_the_quoted_target():
    assert ocr_prompt_reward("STOP", 'A red sign reading "Stop" at a crossing') == 1.0
    assert ocr_prompt_reward("SPOT", 'A red sign reading "Stop"') == pytest.approx(0.5)


# ------------------------------------------------------------------------------------- CLIP scorers

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from soar_fast.eval.tiny_clip import export_tiny_clip

    return export_tiny_clip(str(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))


PROMPTS = ["a photo of a cat", "a red circle", 'a sign that says "hi"']


def _clip_direct(folder, pixels, prompts):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    tok = proc.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok.input_ids, attention_mask=tok.attention_mask, pixel_values=pixels)
    return model, proc, out.logits_per_image.diag() / model.logit_scale.exp()


def test_clipscore_is_the_cosine(tiny_clip, images):
    scorer = load_scorers(["clipscore"], EvalConfig(weights={"clipscore": tiny_clip}), CPU)[0]
    got = torch.tensor(scorer.score(images, PROMPTS, [{}] * 3)["clipscore"])
    # The reference's tensor preprocessing: bilinear antialiased resize to the tower size, CLIP mean/std.
    _, proc, _ = _clip_direct(tiny_clip, torch.zeros(1, 3, 32, 32), PROMPTS[:1])
    mean = torch.tensor(proc.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_processor.image_std).view(1, 3, 1, 1)
    pixels = (F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True) - mean) / std
    _, _, cos = _clip_direct(tiny_clip, pixels, PROMPTS)
    assert_close(got, cos)
    assert torch.all(got.abs() <= 1)
    # Batched == one at a time.
    single = [scorer.score(images[i:i + 1], PROMPTS[i:i + 1], [{}])["clipscore"][0] for i in range(3)]
    assert_close(got, torch.tensor(single))


def test_pickscore_is_on_the_x26_scale(tiny_clip, images):
    scorer = load_scorers(["pickscore"], EvalConfig(weights={"pickscore": tiny_clip}), CPU)[0]
    got = torch.tensor(scorer.score(images, PROMPTS, [{}] * 3)["pickscore"])
    from soar_fast.eval.scorers import to_uint8_hwc

    model, proc, _ = _clip_direct(tiny_clip, torch.zeros(1, 3, 32, 32), PROMPTS[:1])
    pixels = proc.image_processor(images=to_uint8_hwc(images), return_tensors="pt")["pixel_values"]
    _, _, cos = _clip_direct(tiny_clip, pixels, PROMPTS)
    assert_close(got, model.logit_scale.exp().detach() * cos)


def test_aesthetic_from_a_folder_and_from_file_plus_clip(tiny_clip, images):
    from soar_fast.eval.scorers.aesthetic import MLP_FILE

    a = load_scorers(["aesthetic"], EvalConfig(weights={"aesthetic": tiny_clip}), CPU)[0]
    b = load_scorers(["aesthetic"], EvalConfig(weights={"aesthetic": f"{tiny_clip}/{MLP_FILE}",
                                                        "clipscore": tiny_clip}), CPU)[0]
    sa, sb = a.score(images, PROMPTS, [{}] * 3)["aesthetic"], b.score(images, PROMPTS, [{}] * 3)["aesthetic"]
    assert sa == sb and all(torch.isfinite(torch.tensor(sa)))


# ------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("name, key", [("clipscore", "eval.weights.clipscore"),
                                       ("pickscore", "eval.weights.pickscore"),
                                       ("aesthetic", "eval.weights.aesthetic")])
def test_missing_weights_name_the_scorer_and_key(name, key, tmp_path):
    with pytest.raises(ScorerUnavailable, match=rf"scorer '{name}': set {key}"):
        load_scorers([name], EvalConfig(), CPU)
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ScorerUnavailable, match=rf"scorer '{name}': {key} = '{missing}' is not an existing"):
        load_scorers([name], EvalConfig(weights={name: missing}), CPU)


def test_a_folder_that_is_not_clip_is_reported(tmp_path):
    with pytest.raises(ScorerUnavailable, match="scorer 'clipscore': eval.weights.clipscore .* not a loadable CLIP"):
        load_scorers(["clipscore"], EvalConfig(weights={"clipscore": str(tmp_path)}), CPU)


class _Payload:
    pass


def test_aesthetic_mlp_must_be_weights_only(tmp_path, tiny_clip):
    bad = tmp_path / "mlp.pth"
    torch.save({"layers.0.weight": torch.zeros(1, 16), "obj": _Payload()}, bad)  # code in the pickle
    with pytest.raises(ScorerUnavailable, match="scorer 'aesthetic'.*weights-only"):
        load_scorers(["aesthetic"], EvalConfig(weights={"aesthetic": str(bad), "clipscore": tiny_clip}), CPU)


@pytest.mark.parametrize("name, module, hint", [("hpsv2", "open_clip", "pip install open_clip_torch"),
                                                ("imagereward", "ImageReward", "pip install image-reward"),
                                                ("ocr", "paddleocr", "paddleocr")])
def test_missing_extra_names_the_package(name, module, hint, tmp_path):
    if importlib.util.find_spec(module) is not None:
        with pytest.raises(ScorerUnavailable, match=rf"scorer '{name}': set eval.weights.{name}"):
            load_scorers([name], EvalConfig(), CPU)
        return
    with pytest.raises(ScorerUnavailable, match=rf"scorer '{name}' needs the Python package '{module}'.*{hint}"):
        load_scorers([name], EvalConfig(weights={name: str(tmp_path)}), CPU)


def test_geneval_needs_its_command():
    with pytest.raises(ScorerUnavailable, match="scorer 'geneval': set eval.geneval_command"):
        load_scorers(["geneval"], EvalConfig(), CPU)


def test_unknown_scorer_is_rejected_before_loading():
    with pytest.raises(ValueError, match="eval.scorers: unknown scorer 'clipscroe'"):
        load_scorers(["clipscore", "clipscroe"], EvalConfig(), CPU)
    assert scorer_class("clipscore").keys == ("clipscore",)
