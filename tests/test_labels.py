"""Labels from the request as people type it (the grammar of docs/labels.md), <p> phrases paired with their [SEG],
and one request rule for the library and the nodes."""

import pytest
import torch

from nodetools import segment

from sa2va.outputs.labels import RULES, WORD_CLASSES, object_labels, request_phrase, tagged_phrases
from sa2va.requests import MAX_BARE_WORDS, as_request, is_bare_phrase

# ------------------------------------------------------------------------------------------- the request table
#: (request as typed, the label it gives); grouped by the rule of docs/labels.md that reads it
REQUESTS = [
    # verb: an imperative whose object is the thing
    ("Please segment the red car.", "red car"),
    ("Segment the dog.", "dog"),
    ("Outline the building.", "building"),
    ("Highlight the person on the left.", "person on the left"),
    ("Isolate the bird in this photo.", "bird"),
    ("Cut out the person.", "person"),
    ("Select the car in the picture.", "car"),
    ("Mask out the background.", "background"),
    ("Locate the nearest chair in the image.", "nearest chair"),
    ("Track the white van in this video.", "white van"),
    ("Please identify and segment the person in this image.", "person"),
    ("Pick out the ripe tomatoes.", "ripe tomatoes"),
    ("Please find and segment the bird.", "bird"),
    ("Locate and highlight the fire hydrant in this picture.", "fire hydrant"),
    # politeness, before and after
    ("please segment the cat please", "cat"),
    ("Could you please outline the lamp for me?", "lamp"),
    ("Hey, can you isolate the horse, please?", "horse"),
    ("Kindly highlight the traffic light. Thanks!", "traffic light"),
    ("Would you segment the dog in this image?", "dog"),
    ("Help me find the keys.", "keys"),
    ("Now segment the sky.", "sky"),
    # questions
    ("Where's the cat?", "cat"),
    ("Where is the cat?", "cat"),
    ("Where are the scissors in this picture?", "scissors"),
    ("Where is the cat located in this image?", "cat"),
    ("Where exactly is the cat?", "cat"),
    ("Which is the tallest tree?", "tallest tree"),
    ("Which one is the teacher?", "teacher"),
    ("What is the cup on the left? Please respond with segmentation mask.", "cup on the left"),
    ("Who is the woman in the red dress?", "woman in the red dress"),
    ("Is there a dog in the photo?", "dog"),
    ("Are there any boats?", "boats"),
    ("Can you find me the red car?", "red car"),
    ("Can you find the remote?", "remote"),
    ("Do you see a bicycle?", "bicycle"),
    ("Where can I find the exit sign?", "exit sign"),
    # wishes
    ("I'd like a mask of the dog.", "dog"),
    ("I would like a segmentation mask for the sofa.", "sofa"),
    ("I want to segment the chair.", "chair"),
    ("I want a mask of the lamp, please.", "lamp"),
    ("I need the road segmented.", "road"),
    ("I'd like you to outline the boat.", "boat"),
    ("I want the cat highlighted in this image.", "cat"),
    ("I'm looking for the blue umbrella.", "blue umbrella"),
    ("I\u2019d like to see where the dog is.", "dog"),
    # imperatives with a mask word
    ("Draw a mask around the tree.", "tree"),
    ("Make a mask for the sky.", "sky"),
    ("Give me a mask of the horse.", "horse"),
    ("Please create a segmentation mask of the left shoe.", "left shoe"),
    ("Could you provide a segmentation mask for the blue bus in this image?", "blue bus"),
    ("Draw an outline around the mountain.", "mountain"),
    ("Give me the bottle.", "bottle"),
    ("Can you highlight the cat in this image with a segmentation mask?", "cat"),
    # show (me) where ... (is)
    ("Show me where the bicycle is.", "bicycle"),
    ("Show me the bicycle.", "bicycle"),
    ("Show where the sun is in this picture.", "sun"),
    ("Tell me where the keys are.", "keys"),
    ("Can you show me where the exit is located?", "exit"),
    # relative clauses are the object's own words
    ("Please segment the person who is holding an umbrella.", "person who is holding an umbrella"),
    ("Segment the man that is sitting on the bench.", "man that is sitting on the bench"),
    ("Where is the dog which is lying on the grass?", "dog which is lying on the grass"),
    ("Find the woman who is wearing a hat in this image.", "woman who is wearing a hat"),
    ("Show me the person who is waving.", "person who is waving"),
    # trailing context
    ("Segment the cat in the given image please.", "cat"),
    ("Highlight the goal in the current frame.", "goal"),
    ("Segment the cat with a mask.", "cat"),
    ("Please segment the giraffe from this photo, thank you.", "giraffe"),
    # the object's own words are never dropped
    ("Segment the picture frame.", "picture frame"),
    ("Segment the thing in the picture frame.", "thing in the picture frame"),
    ("Segment the mask on the wall.", "mask on the wall"),
    ("Please segment the red and white car.", "red and white car"),
    ("Find the man in the image on the left.", "man in the image on the left"),
    ("Highlight the woman with the umbrella.", "woman with the umbrella"),
    ("Please segment the object similar to region1.", "object similar to region1"),
    # bare phrases (sa2va.requests.is_bare_phrase: made "Please segment the ..." first)
    ("red car", "red car"),
    ("the tall man", "tall man"),
    ("a cat", "cat"),
    ("the man in the red shirt", "man in the red shirt"),
    ("mask of the dog", "dog"),
    # several sentences: the first that names an object
    ("The image shows a street at night. Please segment the parked bicycle.", "parked bicycle"),
    ("What is in the picture? Please segment the dog.", "dog"),
    # nothing named
    ("What is this?", ""),
    ("Segment everything.", ""),
    ("Describe the image.", ""),
    ("Please respond with segmentation mask.", ""),
    ("What is in this image?", ""),
    ("a dog running on the beach at dusk", ""),  # 8 words: not a bare phrase, sent as typed, read by no rule
]


@pytest.mark.parametrize("prompt, label", REQUESTS)
def test_request_table(prompt, label):
    assert request_phrase(prompt) == label
    # the label a forced trained answer gets
    assert object_labels("Sure, [SEG].", 1, prompt) == [label]


def test_the_table_is_large_and_has_several_phrasings_of_each_way_of_asking():
    assert len(REQUESTS) >= 60 and len({p for p, _ in REQUESTS}) == len(REQUESTS)


def test_every_rule_start_is_an_instruction_so_as_request_leaves_it_as_typed():
    """A request in any form the grammar reads is never wrapped as a bare name ("Please segment the where's ...")."""
    for rule in RULES:
        first = rule.slots.split()[0]
        if first.endswith("?") or first not in WORD_CLASSES:
            continue
        for phrase in WORD_CLASSES[first]:
            text = f"{phrase} the cat"
            assert not is_bare_phrase(text), (rule.name, phrase)
            assert as_request(text) == text


@pytest.mark.parametrize("prompt", [p for p, _ in REQUESTS] + ["hair", "the dog on the left", "left shoe"])
def test_a_text_and_the_request_built_from_it_name_the_same_object(prompt):
    assert request_phrase(as_request(prompt)) == request_phrase(prompt)


# ------------------------------------------------------------------------------------------- the bare-phrase rule
@pytest.mark.parametrize("text, bare", [
    ("hair", True), ("the red car", True), ("the man in the red shirt", True), ("red car on the left", True),
    ("a dog running on the beach at dusk", False), ("red car.", False), ("Where's the cat", False),
    ("cut out the bird", False), ("I want the dog", False), ("draw a mask around the tree", False),
    ("there is a dog", False), ("<image>hair", True), ("", False),
])
def test_bare_phrase_rule(text, bare):
    assert is_bare_phrase(text) is bare
    assert (as_request(text) != text) is bare


def test_the_longest_bare_phrase():
    words = ["big"] * (MAX_BARE_WORDS - 1) + ["dog"]
    assert as_request(" ".join(words)) == f"Please segment the {' '.join(words)}."
    assert as_request(" ".join(["big"] + words)) == " ".join(["big"] + words)


# ---------------------------------------------------------------------------------------------- <p> phrases
def test_each_seg_takes_the_phrase_nearest_it():
    # the greedy pattern of before gave "a</p> and <p>b"
    assert tagged_phrases("<p>a</p> and <p>b</p> [SEG]") == ["b"]
    assert object_labels("<p>a</p> and <p>b</p> [SEG]", 1) == ["b"]
    assert tagged_phrases("<p>a</p> and <p>b</p> [SEG] [SEG]") == ["a", "b"]
    assert tagged_phrases("<p>a</p> [SEG] [SEG]") == ["a", None]
    assert tagged_phrases("[SEG] <p>a</p> [SEG]") == [None, "a"]
    assert tagged_phrases("<p> </p>[SEG]") == [None]
    assert tagged_phrases("no phrases, no seg") == []


def test_a_grounded_description_gets_one_label_per_phrase_however_many():
    names = [f"object number {k}" for k in range(12)]
    answer = "The picture shows " + ", ".join(f"<p>{n}</p> [SEG]" for n in names) + ".<|im_end|>"
    assert object_labels(answer, 12, "Could you describe the image with masks?") == names
    gcg = ("<p>A man</p> [SEG] in a <p>blue\njacket</p> [SEG] walks his <p>dog</p> [SEG] along <p>the beach</p> "
           "[SEG].")
    assert object_labels(gcg, 4) == ["A man", "blue jacket", "dog", "the beach"]


def test_a_seg_without_phrase_falls_back_to_the_request_then_to_the_answer():
    assert object_labels("<p>A man</p> [SEG] stands next to it [SEG].", 2, "Please segment the red car.") == [
        "A man", "red car"]
    assert object_labels("<p>A man</p> [SEG] and a dog [SEG].", 2, "Describe the image.") == ["A man", "dog"]
    assert object_labels("<p>A man</p> [SEG] and it is [SEG].", 2, "What is this?") == ["A man", ""]


# ----------------------------------------------------------------------------- the library and the node agree
@pytest.fixture
def handle(qwen3_handle):
    return qwen3_handle


@pytest.mark.parametrize("text", ["the tall man", "red car on the left", "Where's the cat?",
                                  "a dog running on the beach at dusk", "Show me where the bicycle is."])
def test_library_and_node_build_the_same_request_and_label(handle, monkeypatch, image, text):
    """The node and the library (its engine call) both send ``as_request(text)``, and label it alike."""
    model = handle.model
    sent = []
    original = model.generator.prompt_inputs

    def spy(images, prompt, **kwargs):
        sent.append(prompt)
        return original(images, prompt, **kwargs)

    monkeypatch.setattr(model.generator, "prompt_inputs", spy)
    node = segment(torch.from_numpy(image).float()[None] / 255, text, handle, max_new_tokens=16)
    node_requests, sent[:] = list(sent), []
    assert set(node_requests) == {as_request(text)}, "the node sends the request the one rule builds"
    library = model.predict(image, text, max_new_tokens=16)  # the text as the user gave it
    assert sent[-1] == node_requests[0], "the library sends the node's request"
    built = model.predict(image, as_request(text), max_new_tokens=16)  # the request itself
    assert sent[-1] == node_requests[0]
    label = request_phrase(text)
    assert node.phrases.splitlines() == [f"0: {label}"]
    assert library.phrases == built.phrases == [label]
