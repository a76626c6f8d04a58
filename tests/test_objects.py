"""Objects, not just masks: labels that name them, SAM2 scores, boxes from masks, several prompts on one image."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import end_token, forced, ids, natural_answer
from sa2va.outputs.boxes import box_record, mask_boxes
from sa2va.outputs.labels import answer_words, object_labels, request_phrase, split_objects
from sa2va.requests import prompt_lines
from sa2va.outputs.objects import keep_confident
from sa2va.grounding.sam2 import sam2_pixels

# ------------------------------------------------------------------------------------------------ labels
TEMPLATES = ["Sure, it is [SEG].", "It is [SEG].", "Sure, [SEG].", "[SEG].", "Sure, the segmentation result is [SEG].",
             "Sure, it is[SEG].<|im_end|>"]


@pytest.mark.parametrize("answer", TEMPLATES)
def test_every_answer_template_is_labelled_with_the_requested_object(answer):
    assert object_labels(answer, 1, "Please segment the red car.") == ["red car"]
    # no object in the request: the template's words are boilerplate, never a label
    assert object_labels(answer, 1, "What is this?") == [""]


@pytest.mark.parametrize("prompt, phrase", [
    ("Please segment the red car.", "red car"),
    ("red car", "red car"),
    ("hair", "hair"),
    ("the tall man", "tall man"),
    ("<image>Please segment the woman holding the red umbrella.", "woman holding the red umbrella"),
    ("Could you segment the dog in this image?", "dog"),
    ("Can you highlight the cat in this image with a segmentation mask?", "cat"),
    ("Could you provide a segmentation mask for the blue bus in this image?", "blue bus"),
    ("Please identify and segment the person in this image.", "person"),
    ("What is the cup on the left? Please respond with segmentation mask.", "cup on the left"),
    ("Where is the boy in this picture? Please respond with a segmentation mask.", "boy"),
    ("The image shows a street at night. Please segment the parked bicycle.", "parked bicycle"),
    ("Please segment the object similar to region1.", "object similar to region1"),
    ("Please segment the main subject.", "main subject"),
    ("What is this?", ""),
    ("Segment everything.", ""),
])
def test_request_phrase_names_the_object(prompt, phrase):
    assert request_phrase(prompt) == phrase


def test_p_text_wins_and_several_segs_keep_one_label_each_in_order():
    answer = "Sure, <p>the red car</p> [SEG] and <p>a dog</p>[SEG].<|im_end|>"
    assert object_labels(answer, 2, "Please segment the vehicles.") == ["the red car", "a dog"]
    # a request that lists as many objects as there are [SEG]: one each, in order
    assert object_labels("It is [SEG], [SEG] and [SEG].", 3, "Please segment the cat, the dog and the bird.") == [
        "cat", "dog", "bird"]
    # a count that does not match: the whole phrase for each
    assert object_labels("It is [SEG] and [SEG].", 2, "Please segment the red and white car.") == [
        "red and white car", "red and white car"]
    assert split_objects("cat and dog", 3) is None
    # only the first `count` [SEG] get labels (a trailing [SEG] without a mask gets none)
    assert object_labels("<p>a</p>[SEG] <p>b</p>[SEG]", 1, "") == ["a"]


def test_answer_words_drop_the_boilerplate_but_keep_names():
    assert answer_words("Sure, it is ") == ""
    assert answer_words("Sure, the segmentation result is ") == ""
    assert answer_words("It is a dog ") == "dog"
    assert answer_words(" and the sky") == "sky"
    assert object_labels("It is a dog [SEG].", 1, "What is this?") == ["dog"]


def test_prompt_lines():
    assert prompt_lines("the red car\n\n  the dog \n<image>") == ["the red car", "the dog"]
    assert prompt_lines("   ") == []


def test_predict_and_video_label_the_requested_object(model_factory, family, image):
    model = model_factory(family)
    pred = model.predict(image, "<image>Please segment the person.", max_new_tokens=32)
    assert pred.raw_text == natural_answer(model)
    assert pred.phrases == ["person"]
    video = model.predict_video([image, image], "Please segment the red box.", max_new_tokens=32, key_frames=1)
    assert video.phrases == ["red box"] * video.masks.shape[0]


# ------------------------------------------------------------------------------------------------ scores
def _answer(model, count):
    seg = model.tokenizer.convert_tokens_to_ids("[SEG]")
    end = end_token(model)
    return ids(model, "Sure,") + (ids(model, " it is") + [seg]) * count + [end]


def test_scores_equal_the_decoders(model_factory, family, image):
    model = model_factory(family)
    captured = {}
    original = model.decoder.decode_groups

    def spy(images, groups, *args, **kwargs):
        captured["states"] = torch.stack(groups[0][0])
        return original(images, groups, *args, **kwargs)

    model.decoder.decode_groups = spy
    try:
        pred = forced(model, image, "Please segment the cat.", _answer(model, 2))
    finally:
        del model.decoder.decode_groups
    head = model.grounding
    with torch.inference_mode():
        features = head.encode(sam2_pixels([Image.fromarray(image)], head.image_size))
        embeddings = model.projection(captured["states"])
        out = head.decode(head.pixel_embedding(features), features.high_res, embeddings)
        _, iou, _, _ = head.model.mask_decoder(
            image_embeddings=head.pixel_embedding(features), image_positional_embeddings=head.image_wide_position(),
            sparse_prompt_embeddings=torch.cat([head.model.prompt_encoder(
                input_points=torch.zeros(1, 2, 1, 2), input_labels=-torch.ones(1, 2, 1, dtype=torch.int32),
                input_boxes=None, input_masks=None)[0], embeddings.view(1, 2, 1, -1)], dim=2),
            dense_prompt_embeddings=head.model.prompt_encoder(
                input_points=torch.zeros(1, 2, 1, 2), input_labels=-torch.ones(1, 2, 1, dtype=torch.int32),
                input_boxes=None, input_masks=None)[1], multimask_output=True,
            high_resolution_features=features.high_res)
    assert pred.iou_scores.shape == pred.object_scores.shape == pred.scores.shape == (2,)
    # the predicted IoU of the mask the decoder chose (the best of its three), as the decoder's IoU head gives it
    assert torch.allclose(pred.iou_scores, iou[0].max(-1).values, atol=1e-6)
    assert torch.allclose(pred.object_scores, out.object_score[:, 0].sigmoid(), atol=1e-6)
    assert torch.allclose(pred.scores, pred.iou_scores * pred.object_scores)
    assert ((pred.scores >= 0) & (pred.scores <= 1)).all()


def test_an_absent_object_is_recognisable_by_its_score_and_min_score_drops_it(model_factory, image):
    model = model_factory("qwen3_vl")
    bias = model.grounding.model.mask_decoder.pred_obj_score_head.proj_out.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.fill_(-30.0)
        absent = forced(model, image, "Please segment the unicorn.", _answer(model, 1))
        with torch.no_grad():
            bias.fill_(30.0)
        present = forced(model, image, "Please segment the unicorn.", _answer(model, 1))
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert float(absent.object_scores[0]) < 1e-9 and float(absent.scores[0]) < 1e-9
    assert float(present.object_scores[0]) > 1 - 1e-9
    # the masks themselves are untouched by the object score (no -1024 clamp), as the reference
    assert torch.equal(absent.masks, present.masks)
    assert keep_confident(absent, 0.0) is absent
    level = float(present.scores[0]) / 2  # the random decoder's predicted IoU is low; any level above ~0 separates
    assert level > 1e-3
    dropped = keep_confident(absent, level)
    assert dropped.masks.shape == (0, 480, 640) and dropped.phrases == [] and dropped.scores.shape == (0,)
    assert keep_confident(present, level).masks.shape[0] == 1


# ------------------------------------------------------------------------------------------------- boxes
def test_boxes_from_masks_match_a_brute_force_scan():
    rng = np.random.RandomState(1)
    masks = torch.zeros(4, 30, 40)
    masks[0, 5:12, 7:20] = 0.9
    masks[1] = torch.from_numpy(rng.rand(30, 40).astype(np.float32)) * 0.6
    masks[3, 29, 39] = 1.0
    boxes = mask_boxes(masks, 0.5)
    assert boxes[0] == (7, 5, 20, 12)
    for mask, box in zip(masks, boxes):
        ys, xs = np.nonzero(mask.numpy() >= 0.5)
        expected = None if len(ys) == 0 else (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert box == expected
    assert boxes[2] is None, "an empty mask has no box"
    assert boxes[3] == (39, 29, 40, 30)
    # the threshold in use decides which pixels count; a zero mask never has a box, even at threshold 0
    soft = torch.zeros(1, 30, 40)
    soft[0, 10:20, 10:30] = 0.4
    soft[0, 12:15, 14:18] = 0.8
    assert mask_boxes(soft, 0.5) == [(14, 12, 18, 15)] and mask_boxes(soft, 0.3) == [(10, 10, 30, 20)]
    assert mask_boxes(torch.zeros(1, 5, 5), 0.0) == [None]
    assert box_record((7, 5, 20, 12), score=0.5) == {"x": 7, "y": 5, "width": 13, "height": 7, "score": 0.5}


# ------------------------------------------------------------------------------------------ several prompts
def test_several_prompts_equal_the_prompts_run_one_by_one(model_factory, family, image):
    model = model_factory(family)
    prompts = ["Please segment the person.", "the red box", "What is in the picture?"]
    calls, rows = [], []
    model.encoder_cache.clear()  # count real encoder passes, not earlier tests' cached features
    patch_embed = model.grounding.model.vision_encoder.backbone.patch_embed
    hook = patch_embed.register_forward_hook(lambda *a: calls.append(1))
    try:
        together = model.segment([image], [prompts], max_new_tokens=32,
                                 logits_processor=[lambda input_ids, scores: rows.append(len(input_ids)) or scores])[0]
    finally:
        hook.remove()
    one_by_one = [model.predict(image, p, max_new_tokens=32) for p in prompts]
    assert len(together) == 3
    assert len(calls) == 1, "the SAM2 image encoder runs once for all the prompts"
    assert set(rows) == {3}, "the three requests are generated as one batch"
    for a, b in zip(together, one_by_one):
        assert torch.equal(a.token_ids, b.token_ids) and a.raw_text == b.raw_text and a.phrases == b.phrases
        assert torch.allclose(a.masks, b.masks, atol=1e-5, rtol=0), float((a.masks - b.masks).abs().max())
        assert torch.allclose(a.iou_scores, b.iou_scores, atol=1e-5)
        assert torch.allclose(a.object_scores, b.object_scores, atol=1e-5)
    assert together[0].phrases == ["person"]
    import sa2va

    with pytest.raises(sa2va.InputError, match="non-empty list of requests per image"):
        model.segment([image], [[]])
    rows.clear()
    model.segment([image], [prompts], max_new_tokens=4, generate_batch_size=2,
                  logits_processor=[lambda input_ids, scores: rows.append(len(input_ids)) or scores])
    assert set(rows) == {1, 2}, "generate_batch_size bounds the rows of each generate call"


def test_several_region_prompts_are_batched_and_equal_the_prompts_run_one_by_one(model_factory, image):
    model = model_factory("internvl")
    small = image[:300, :280]  # one tile
    regions = [np.zeros((300, 280), bool), np.zeros((300, 280), bool)]
    regions[0][50:150, 40:140] = True
    regions[1][160:260, 141:241] = True
    prompts = ["Please segment the object similar to region1.", "What is region2?", "Please segment region2."]
    start = model.prompt_inputs([small], prompts[0], regions=regions)["input_ids"].shape[1] - \
        model.prompt_inputs([small], prompts[0])["input_ids"].shape[1]
    assert start > 0  # the region block is in the prompt
    rows = []
    together = model.segment([small], [prompts], max_new_tokens=16, regions=[regions],
                             logits_processor=[lambda input_ids, scores: rows.append(len(input_ids)) or scores])[0]
    assert set(rows) == {3}
    for prompt, got in zip(prompts, together):
        alone = model.predict(small, prompt, max_new_tokens=16, regions=regions)
        assert torch.equal(got.token_ids, alone.token_ids) and got.phrases == alone.phrases
        assert torch.allclose(got.masks, alone.masks, atol=1e-5, rtol=0)
    # requests with and without regions in one call: each kind generated together, answers in request order
    mixed = model.answer_batch([small, small, small], prompts, max_new_tokens=8, regions=[regions, None, regions])
    assert [a.raw_text for a in mixed] == [model.answer([small], p, 8, regions=r).raw_text
                                          for p, r in zip(prompts, [regions, None, regions])]
    import sa2va

    with pytest.raises(sa2va.InputError, match="one region list"):
        model.answer_batch([small, small], prompts[:2], regions=[regions])


def test_labels_of_objects_with_the_same_corner_do_not_hide_each_other():
    from sa2va.outputs.masks import draw_labels

    picture = torch.zeros(120, 200, 3)
    masks = torch.ones(2, 120, 200)
    one = draw_labels(picture, masks[:1], ["first"])
    two = draw_labels(picture, masks, ["first", "second"])
    last_row = int(torch.nonzero((one != picture).any(-1).any(-1)).max())
    assert torch.equal(two[:last_row - 2], one[:last_row - 2]), "the first label stays where it was"
    assert (two[last_row + 1:] != picture[last_row + 1:]).any(), "the second label goes below the first"
