"""Temporal Adapter: temporally consistent video editing nodes for ComfyUI.

Registers every node family of `nodes/` with the V1 API. Relative imports only: the host imports
this folder under a name of its own choosing.
"""
import importlib

# One module per node family; each defines NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS.
_FAMILIES = ("video_nodes", "inversion_nodes", "metrics_nodes", "heatmap_nodes", "adapter_nodes",
             "sampler_nodes")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _name in _FAMILIES:
    _module = importlib.import_module(f".nodes.{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
