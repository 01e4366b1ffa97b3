"""Write docs/NODES.md, the node reference, from the nodes' own definitions (DESCRIPTION, inputs with
defaults and tooltips, outputs), so the reference cannot drift from the code.

    python3 scripts/ta.py run scripts/node_reference.py
"""
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_client import load_manifest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_plugin(comfy_dir):
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    package = types.ModuleType("temporal_adapter")
    package.__path__, package.__package__ = [REPO], "temporal_adapter"
    sys.modules["temporal_adapter"] = package
    with open(os.path.join(REPO, "__init__.py")) as f:
        exec(compile(f.read(), "__init__.py", "exec"), package.__dict__)
    return package


def describe(node_id, cls, display):
    lines = [f"## {display}", "", f"`{node_id}` · category *{cls.CATEGORY}*", "", cls.DESCRIPTION.strip(), "",
             "| input | type | default | what it does |", "| --- | --- | --- | --- |"]
    for section in ("required", "optional"):
        for name, spec in cls.INPUT_TYPES().get(section, {}).items():
            if isinstance(spec[0], list):
                kind = "choice: " + ", ".join(map(str, spec[0])) if spec[0] else "choice (files on disk)"
            else:
                kind = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            default = json.dumps(opts["default"]) if "default" in opts else ("(optional)" if section == "optional" else "")
            tip = opts.get("tooltip", "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {name} | {kind} | {default} | {tip} |")
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    lines += ["", "Outputs: " + ", ".join(f"`{n}` ({t})" for n, t in zip(names, cls.RETURN_TYPES)), ""]
    return "\n".join(lines)


# The model families of the table: (name, the host's supported_models class, make_weights architecture,
# UNet depth as in the host's own configs (comfy/model_detection.py)).
SD_DEPTH = dict(channel_mult=[1, 2, 4, 4], num_res_blocks=[2] * 4, transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                transformer_depth_output=[1] * 9 + [0] * 3, transformer_depth_middle=1)
FAMILIES = [
    ("SD1.x", "SD15", "sd15", SD_DEPTH),
    ("SD2.x (2.0 / 2.1-768-v)", "SD20", "sd2", SD_DEPTH),
    ("SDXL 1.0 and fine-tunes", "SDXL", "sdxl", dict(channel_mult=[1, 2, 4], num_res_blocks=[2] * 3,
     transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
     transformer_depth_middle=10)),
    ("SSD-1B", "SSD1B", "sdxl", dict(channel_mult=[1, 2, 4], num_res_blocks=[2] * 3,
     transformer_depth=[0, 0, 2, 2, 4, 4], transformer_depth_output=[0, 0, 0, 1, 1, 2, 10, 4, 4],
     transformer_depth_middle=-1)),
    ("Segmind Vega", "Segmind_Vega", "sdxl", dict(channel_mult=[1, 2, 4], num_res_blocks=[2] * 3,
     transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
     transformer_depth_middle=-1)),
    ("KOALA-700M", "KOALA_700M", "sdxl", dict(channel_mult=[1, 2, 4], num_res_blocks=[1] * 3,
     transformer_depth=[0, 2, 5], transformer_depth_output=[0, 0, 2, 2, 5, 5], transformer_depth_middle=-2)),
]


def compact(ids, depths=None):
    """"input 4-5 ×2, middle ×10, output 0-2 ×10" for block ids: runs of consecutive blocks of one kind (and,
    given `depths`, one transformer depth), with the depth when it is above 1."""
    runs = []
    for kind, number in ids:
        depth = depths[(kind, number)] if depths else 1
        if runs and runs[-1][0] == kind and runs[-1][2] == number - 1 and runs[-1][3] == depth:
            runs[-1][2] = number
        else:
            runs.append([kind, number, number, depth])
    return ", ".join(("middle" if kind == "middle" else f"{kind} {lo}" + (f"-{hi}" if hi > lo else ""))
                     + (f" ×{depth}" if depth > 1 else "") for kind, lo, hi, depth in runs)


def families_table():
    """What each mechanism uses on each family's layout: the roles of adapter_core.layout on UNets built
    (shapes only, on the meta device) with the host's own classes and each family's configuration."""
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from make_weights import unet_config

    from temporal_adapter.nodes import host
    columns = []
    for name, cls, arch, depth in FAMILIES:
        config = unet_config(arch, depth)
        unet = UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
        model_config = getattr(comfy.supported_models, cls)(config)
        layout = host.unet_layout(types.SimpleNamespace(model=types.SimpleNamespace(
            diffusion_model=unet, model_config=model_config)))
        layers = sum(layout.depths().values())
        decoder = compact(layout.decoder_attention_blocks())
        columns.append((name, [
            f"`{cls}`", f"{layout.context_dim}" + (f" + ADM {layout.adm_channels}" if layout.adm_channels else ""),
            f"{compact(layout.attention_blocks(), layout.depths())}: {layers} layers", f"{layout.context_dim} wide",
            f"q/k/v/out of all {layers} layers", decoder, compact(layout.filter_blocks()), f"all {layers} layers",
            f"attention {decoder}; features entering {compact([layout.feature_block()])}", decoder]))
    rows = ["detected as (host class)", "context width", "attention blocks (layers)", "adapter tokens",
            "adapter LoRA", "temporal loss features (decoder blocks 4-11)", "temporal filter (2 highest-resolution "
            "decoder attention blocks)", "keyframe attention", "source injection", "heatmaps default (decoder blocks "
            "4-11)"]
    lines = ["## Supported model families", "",
             "Every node works on these layouts; each mechanism chooses its blocks by role in the model's own layout "
             "(`adapter_core/layout.py`), so SD1.x gives the papers' SD1.5 blocks. Patches and captures act on every "
             "transformer layer of a block (×n: blocks of n layers). Generated from the layouts of UNets "
             "built with the host's own classes.", "",
             "| | " + " | ".join(name for name, _ in columns) + " |", "| --- " * (len(columns) + 1) + "|"]
    for i, row in enumerate(rows):
        lines.append(f"| {row} | " + " | ".join(values[i] for _, values in columns) + " |")
    return "\n".join(lines + [""])


def main():
    manifest = load_manifest()
    plugin = load_plugin(manifest["comfyui"])
    parts = ["# Node reference", "", "Generated by `scripts/node_reference.py` from the nodes' definitions; "
             "the same tooltips show in ComfyUI when you hover an input.", "", families_table()]
    for node_id, cls in plugin.NODE_CLASS_MAPPINGS.items():
        parts.append(describe(node_id, cls, plugin.NODE_DISPLAY_NAME_MAPPINGS[node_id]))
    os.makedirs(os.path.join(REPO, "docs"), exist_ok=True)
    path = os.path.join(REPO, "docs", "NODES.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(parts))
    os.replace(path + ".tmp", path)
    print("wrote", os.path.relpath(path, REPO))


if __name__ == "__main__":
    main()
