"""Progress and events: the running prompt as the host shows and controls it.

The node's progress bar (with latent previews while sampling), the user's Cancel (`check_interrupt`,
honoured by every progress update), messages pushed to the front end (`send_event`, a no-op without a
server) and the free RAM a loader plans by.
"""
import psutil

import comfy.model_management
import comfy.utils


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


def available_memory():
    """Bytes of RAM free now (IMAGE batches live in CPU memory)."""
    return psutil.virtual_memory().available


def send_event(event, data):
    """Push a message to the front end; a no-op when no server runs (in-process tests)."""
    try:
        import server
    except ImportError:
        return
    instance = getattr(server.PromptServer, "instance", None)
    if instance is not None:
        instance.send_sync(event, data)


def preview_callback(model, total):
    """The host's progress bar with latent previews: update(step, x0) with x0 the model-space latent
    predicted at that step (its first frame is shown); honours interrupt."""
    import latent_preview
    callback = latent_preview.prepare_callback(model, total)

    def update(step, x0):
        check_interrupt()
        callback(step - 1, x0, None, total)
    return update
