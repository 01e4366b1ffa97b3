"""The one module that touches ComfyUI internals (comfy, folder_paths, server).

Node files call these helpers instead of the host, so a host change is fixed here. Only API that
both the 2024 host and the newest host have is used (see shared design notes, "API surface").
"""
import os

import comfy.model_management
import comfy.utils
import folder_paths


def check_interrupt():
    """Raise the host's interrupt exception if the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """Progress bar on the running node; `step()` also honours interrupt.

    Usable as the core's `progress(i, total)` callback: `Progress(total).callback`.
    """

    def __init__(self, total):
        self.total = max(int(total), 1)
        self.bar = comfy.utils.ProgressBar(self.total)

    def update(self, value, preview=None):
        check_interrupt()
        self.bar.update_absolute(min(int(value), self.total), self.total, preview)

    def callback(self, done, total=None):
        if total is not None and total != self.total:
            self.total = max(int(total), 1)
        self.update(done)


def input_directory():
    return folder_paths.get_input_directory()


def output_directory():
    return folder_paths.get_output_directory()


def temp_directory():
    return folder_paths.get_temp_directory()


def allowed_roots():
    """Folders a user-typed path may point into: input, output and temp folders."""
    return [os.path.realpath(d) for d in (input_directory(), output_directory(), temp_directory())]


def save_location(filename_prefix, width=0, height=0, directory=None):
    """ComfyUI's prefix convention: returns (folder, filename, counter, subfolder)."""
    directory = directory or output_directory()
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, directory, width, height)
    return folder, filename, counter, subfolder


def send_event(event, data):
    """Push a message to the front end; a no-op when no server runs (in-process tests)."""
    try:
        import server
    except ImportError:
        return
    instance = getattr(server.PromptServer, "instance", None)
    if instance is not None:
        instance.send_sync(event, data)
