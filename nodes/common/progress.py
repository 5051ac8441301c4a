"""The core's per-step callback wired to ComfyUI: progress bar, latent preview, and Cancel within one step."""
import comfy.model_management as mm
import comfy.utils
import latent_preview


def step_callback(total, node_id=None, model=None):
    """A core callback that checks for Cancel, advances the node's progress bar and sends a preview when it can."""
    bar = comfy.utils.ProgressBar(total, node_id=node_id)
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format) if model is not None else None

    def callback(info):
        mm.throw_exception_if_processing_interrupted()
        preview = None
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", info["denoised"]())
        bar.update_absolute(info["step"] + 1, info["total"], preview)
    return callback
