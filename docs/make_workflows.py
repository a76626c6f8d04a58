"""Write the UI-format example workflows in example_workflows/: ``python docs/make_workflows.py``.

UI format (nodes with positions, widget values and links), which ComfyUI's template browser loads as graphs.
Widget values follow the order of each node's widget inputs in its schema (the node classes in nodes/).
"""
import json
from pathlib import Path
OUT = Path(__file__).resolve().parents[1] / "example_workflows"

class WF:
    """A tiny builder for UI-format workflows."""

    def __init__(self):
        self.nodes, self.links = [], []
    def node(self, type_, pos, widgets, inputs=(), outputs=(), size=(320, 260), title=None):
        nid = len(self.nodes) + 1
        n = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1, "mode": 0,
             "inputs": [{"name": i[0], "type": i[1], "link": None, **({"widget": {"name": i[2]}} if len(i) > 2 else {})}
                        for i in inputs],
             "outputs": [{"name": name, "type": t, "links": [], "slot_index": i}
                         for i, (name, t) in enumerate(outputs)],
             "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title:
            n["title"] = title
        self.nodes.append(n)
        return nid
    def note(self, text, pos=(40, -150), size=(620, 110)):
        """A Note node (ComfyUI's own): what the user has to do before pressing Run, in one or two lines."""
        n = self.node("Note", pos, [text], size=size)
        self.nodes[n - 1].update(color="#432", bgcolor="#653")
        return n
    def link(self, a, a_slot, b, b_input):
        lid = len(self.links) + 1
        src, dst = self.nodes[a - 1], self.nodes[b - 1]
        t = src["outputs"][a_slot]["type"]
        src["outputs"][a_slot]["links"].append(lid)
        for inp in dst["inputs"]:
            if inp["name"] == b_input:
                inp["link"] = lid
                slot = dst["inputs"].index(inp)
        self.links.append([lid, a, a_slot, b, slot, t])
    def save(self, name):
        wf = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
              "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
              "version": 0.4}
        (OUT / f"{name}.json").write_text(json.dumps(wf, indent=2) + "\n")

SEG_IN = [("image", "IMAGE"), ("model", "SA2VA_MODEL"), ("regions", "MASK")]
# boxes: ComfyUI's BOUNDING_BOX where the running ComfyUI has it (nodes/comfy.py), else STRING; the saved type is
# what the UI shows before the node definitions load, and the link type below follows it
SEG_OUT = [("masks", "MASK"), ("merged_mask", "MASK"), ("mask_images", "IMAGE"), ("overlay", "IMAGE"),
           ("text", "STRING"), ("phrases", "STRING"), ("scores", "STRING"), ("boxes", "BOUNDING_BOX")]
LOAD_OUTPUTS = [("IMAGE", "IMAGE"), ("MASK", "MASK")]
LOADER_WIDGETS = ["Sa2VA-Qwen3-VL-4B", "auto", "none", "sdpa", "auto"]

def seg_widgets(prompt, model="Sa2VA-Qwen3-VL-4B", prompt_per_line=False, min_score=0.0, task="segment"):
    """prompt, model_name, max_new_tokens, mask_threshold, apply_mask_threshold, clean_vram_after, then the
    refinement widgets: process_details, black/white point, detail_method, erode, dilate, radius, eps, megapixels;
    then the own model's dtype and quantization, prompt_per_line, min_score and task (each added last when it came,
    so older workflows keep their widget order)."""
    return [prompt, model, 512, 0.3, True, False, True, 0.05, 0.95, "FastMatte", 0, 0, 8, 0.01, 2.0,
            "auto", "none", prompt_per_line, min_score, task]

def previews(wf, seg, x, y):
    p1 = wf.node("PreviewImage", (x, y), [], [("images", "IMAGE")], size=(300, 280), title="Overlay")
    wf.link(seg, 3, p1, "images")
    p2 = wf.node("MaskPreview", (x + 320, y), [], [("mask", "MASK")], size=(300, 280), title="Merged mask")
    wf.link(seg, 1, p2, "mask")
    p3 = wf.node("PreviewAny", (x, y + 310), [], [("source", "*")], size=(620, 160), title="Answer")
    wf.link(seg, 4, p3, "source")
    return p3


def object_previews(wf, seg, x, y):
    """Labels (phrases), scores and boxes of every object."""
    for slot, title, dy in ((5, "Labels", 0), (6, "Scores", 140), (7, "Boxes", 280)):
        node = wf.node("PreviewAny", (x, y + dy), [], [("source", "*")], size=(620, 120), title=title)
        wf.link(seg, slot, node, "source")

# 1. basic: the Segmentation node alone (the README's first workflow)
wf = WF()
img = wf.node("LoadImage", (40, 120), ["example.png", "image"], [], LOAD_OUTPUTS, size=(320, 360))
seg = wf.node("Sa2VASegmentation", (400, 60), seg_widgets("the person"), SEG_IN, SEG_OUT, size=(380, 600))
wf.link(img, 0, seg, "image")
previews(wf, seg, 820, 60)
wf.note('Pick an image in Load Image, type what to segment, press Run. The model downloads into models/sa2va/ on the first run (progress on the node).')
wf.save("sa2va_basic_segmentation")

# 2. one loader shared by two segmentation branches
wf = WF()
img = wf.node("LoadImage", (40, 120), ["example.png", "image"], [], LOAD_OUTPUTS, size=(320, 360))
ld = wf.node("Sa2VALoader", (40, 520), LOADER_WIDGETS, [], [("model", "SA2VA_MODEL")], size=(320, 180))
s1 = wf.node("Sa2VASegmentation", (400, 40), seg_widgets("the person"), SEG_IN, SEG_OUT, size=(380, 600))
s2 = wf.node("Sa2VASegmentation", (400, 680), seg_widgets("the sky"), SEG_IN, SEG_OUT, size=(380, 600))
for s in (s1, s2):
    wf.link(img, 0, s, "image")
    wf.link(ld, 0, s, "model")
previews(wf, s1, 820, 40)
previews(wf, s2, 820, 680)
wf.note('Pick an image in Load Image and press Run: the one Sa2VA Loader feeds both Segmentation nodes, so the model is loaded once for both prompts.')
wf.save("sa2va_shared_loader_two_prompts")

# 3. an image batch
wf = WF()
a = wf.node("LoadImage", (40, 40), ["example.png", "image"], [], LOAD_OUTPUTS, size=(300, 320))
b = wf.node("LoadImage", (40, 400), ["example.png", "image"], [], LOAD_OUTPUTS, size=(300, 320))
batch = wf.node("ImageBatch", (380, 260), [], [("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")],
                size=(220, 80))
wf.link(a, 0, batch, "image1")
wf.link(b, 0, batch, "image2")
ld = wf.node("Sa2VALoader", (380, 420), LOADER_WIDGETS, [], [("model", "SA2VA_MODEL")], size=(320, 180))
seg = wf.node("Sa2VASegmentation", (740, 40), seg_widgets("the main subject"), SEG_IN, SEG_OUT,
              size=(380, 600))
wf.link(batch, 0, seg, "image")
wf.link(ld, 0, seg, "model")
previews(wf, seg, 1160, 40)
wf.note('Pick an image in each Load Image (same size, or ImageBatch resizes the second) and press Run: both are segmented in one batch.')
wf.save("sa2va_image_batch")

# 4. a video: Load Video -> frames -> Sa2VA Video Segmentation -> overlay video, merged masks, answer
VIDEO_OUT = [("masks", "MASK"), ("merged_mask", "MASK"), ("overlay", "IMAGE"), ("text", "STRING"),
             ("phrases", "STRING"), ("scores", "STRING"), ("boxes", "BOUNDING_BOX")]

def video_widgets(prompt, min_score=0.0, task="segment"):
    """prompt, model_name, key_frames, key_frame_spacing, mode, offload_frames, offload_state, max_new_tokens,
    mask_threshold, apply_mask_threshold, clean_vram_after, dtype, quantization, then min_score and task (added last,
    so older workflows keep their widget order)."""
    return [prompt, "Sa2VA-Qwen3-VL-4B", 5, "first", "memory", True, False, 512, 0.3, True, False, "auto", "none",
            min_score, task]

wf = WF()
vid = wf.node("LoadVideo", (40, 60), ["example.mp4", "image"], [], [("VIDEO", "VIDEO")], size=(320, 380))
parts = wf.node("GetVideoComponents", (40, 480), [], [("video", "VIDEO")],
                [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")], size=(320, 90))
wf.link(vid, 0, parts, "video")
ld = wf.node("Sa2VALoader", (40, 620), LOADER_WIDGETS, [], [("model", "SA2VA_MODEL")], size=(320, 180))
seg = wf.node("Sa2VAVideoSegmentation", (400, 60), video_widgets("the person"),
              [("frames", "IMAGE"), ("model", "SA2VA_MODEL")], VIDEO_OUT, size=(380, 520))
wf.link(parts, 0, seg, "frames")
wf.link(ld, 0, seg, "model")
make = wf.node("CreateVideo", (820, 60), [24], [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT", "fps")],
               [("VIDEO", "VIDEO")], size=(260, 100))
wf.link(seg, 2, make, "images")
wf.link(parts, 1, make, "audio")
wf.link(parts, 2, make, "fps")
save = wf.node("SaveVideo", (1120, 60), ["video/Sa2VA", "auto", "auto"], [("video", "VIDEO")], size=(420, 420),
               title="Overlay video")
wf.link(make, 0, save, "video")
mp = wf.node("MaskPreview", (820, 520), [], [("mask", "MASK")], size=(300, 280), title="Merged mask per frame")
wf.link(seg, 1, mp, "mask")
txt = wf.node("PreviewAny", (1140, 520), [], [("source", "*")], size=(400, 120), title="Answer")
wf.link(seg, 3, txt, "source")
ph = wf.node("PreviewAny", (1140, 660), [], [("source", "*")], size=(400, 140), title="Which masks are which object")
wf.link(seg, 4, ph, "source")
wf.note("Pick a video in Load Video (its upload button copies one into ComfyUI's input folder), type what to track, press Run.")
wf.save("sa2va_video")

# 5. region prompts (Sa2VA-InternVL3): a painted mask on the image is region1
wf = WF()
img = wf.node("LoadImage", (40, 60), ["example.png", "image"], [], LOAD_OUTPUTS, size=(320, 360),
              title="Image (paint region1 in the mask editor)")
ld = wf.node("Sa2VALoader", (40, 480), ["Sa2VA-InternVL3-2B", "auto", "none", "sdpa", "auto"], [],
             [("model", "SA2VA_MODEL")], size=(320, 180))
seg = wf.node("Sa2VASegmentation", (400, 60), seg_widgets("Please segment the object similar to region1.",
                                                          model="Sa2VA-InternVL3-2B"),
              SEG_IN, SEG_OUT, size=(380, 640))
wf.link(img, 0, seg, "image")
wf.link(img, 1, seg, "regions")
wf.link(ld, 0, seg, "model")
previews(wf, seg, 820, 60)
object_previews(wf, seg, 820, 560)
wf.note('Pick an image, then right-click Load Image > Open in MaskEditor and paint the region: the painted area is region1. Region prompts need a Sa2VA-InternVL3 model (picked in the Loader).')
wf.save("sa2va_region_prompt")

# 6. several prompts at once: one request per line on the same image, outputs grouped and labelled by line
wf = WF()
img = wf.node("LoadImage", (40, 60), ["example.png", "image"], [], LOAD_OUTPUTS, size=(320, 360))
ld = wf.node("Sa2VALoader", (40, 480), LOADER_WIDGETS, [], [("model", "SA2VA_MODEL")], size=(320, 180))
seg = wf.node("Sa2VASegmentation", (400, 60),
              seg_widgets("the person on the left\nthe person on the right\nthe sky", prompt_per_line=True),
              SEG_IN, SEG_OUT, size=(380, 640))
wf.link(img, 0, seg, "image")
wf.link(ld, 0, seg, "model")
previews(wf, seg, 820, 60)
object_previews(wf, seg, 820, 560)
wf.note('Pick an image and press Run: each line of the prompt is its own request (prompt_per_line is on), each with its own labelled masks.')
wf.save("sa2va_several_prompts")

# 7. describe with masks: the model describes the image, each phrase it grounds with its own labelled mask
wf = WF()
img = wf.node("LoadImage", (40, 60), ["example.png", "image"], [], LOAD_OUTPUTS, size=(320, 360))
ld = wf.node("Sa2VALoader", (40, 480), LOADER_WIDGETS, [], [("model", "SA2VA_MODEL")], size=(320, 180))
seg = wf.node("Sa2VASegmentation", (400, 60), seg_widgets("", task="describe with masks"), SEG_IN, SEG_OUT,
              size=(380, 640), title="Sa2VA Segmentation (describe with masks)")
wf.link(img, 0, seg, "image")
wf.link(ld, 0, seg, "model")
previews(wf, seg, 820, 60)
object_previews(wf, seg, 820, 560)
wf.note('Pick an image and press Run: the model describes it and gives one labelled mask per phrase it grounds (the prompt is not used).')
wf.save("sa2va_describe_with_masks")
