"""The `solver` kind of bench.py: how far few-step samplers land from a 1000-step DDIM reference (relative L2 of
the final latents), our DPM-Solver++(2M) Karras against diffusers' DDIM and DDPM; --quick: a tiny random UNet."""
import torch

import harness as H


@torch.no_grad()
def child(spec, device, memory):
    """Final latents from one starting noise: ours DPM++ 25 and diffusers' DDPM / DDIM 100 against a 1000-step DDIM."""
    import diffusers
    from kandinsky_core import schedulers
    from kandinsky_core.kandinsky2 import decoder_pipeline as D
    from kandinsky_core.kandinsky2.decoder_pipeline import DecoderModels
    from kandinsky_core.kandinsky2.loading import load_decoder_models
    if spec["decoder"] is None:  # --quick: a tiny UNet with diffusers' default init; the full model takes ~1000 steps too long
        from dataclasses import asdict
        from kandinsky_core.movq import MOVQ_TINY, MoVQ
        from kandinsky_core.kandinsky2.unet import UNET_22_TINY, UNet
        torch.manual_seed(0)
        their_unet = diffusers.UNet2DConditionModel(**asdict(UNET_22_TINY), class_embed_type=None).eval()
        ours = DecoderModels(UNet(UNET_22_TINY).eval(), MoVQ(MOVQ_TINY).eval(), None)
        ours.unet.load_state_dict(their_unet.state_dict())
        dim = UNET_22_TINY.image_embed_dim
    else:
        ours = load_decoder_models(spec["decoder"], device=device)
        their_unet = diffusers.UNet2DConditionModel.from_pretrained(spec["decoder"], subfolder="unet").to(device).eval()
        dim = 1280
    size, g = spec["size"], torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device)
    emb, neg = (torch.randn(1, dim, generator=g).to(device) for _ in range(2))
    ode = {**schedulers.KANDINSKY_2_2_DDPM, "clip_sample": False}
    cond = D.conditioning(ours, emb, neg, None, None, 1, 4.0)

    def ours_run(scheduler, steps):
        return D.sample_text_to_image(ours, cond, noise.shape, steps=steps, guidance_scale=4.0, latents=noise,
                                      scheduler=scheduler, generator=torch.Generator().manual_seed(1))

    def theirs_run(cls, config, steps):
        scheduler = getattr(diffusers, cls).from_config({k: v for k, v in config.items() if k != "_class_name"})
        # output_type="latent" never runs the MoVQ; the pipeline only reads its 8x scale factor from the config.
        movq = diffusers.VQModel(block_out_channels=(8,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                                 up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8)
        pipe = diffusers.KandinskyV22Pipeline(unet=their_unet, scheduler=scheduler, movq=movq)
        pipe.set_progress_bar_config(disable=True)
        return pipe(emb, neg, height=size, width=size, num_inference_steps=steps, latents=noise.clone(),
                    output_type="latent", generator=torch.Generator().manual_seed(1)).images

    reference = ours_run(schedulers.DDIMScheduler.from_config({**ode, "steps_offset": 0}), 1000)  # 1000 steps need offset 0
    runs = {"ours DPM++(2M) Karras, 25 steps": ours_run(schedulers.dpm_solver_from(ode), 25),
            "diffusers DDIM, 100 steps": theirs_run("DDIMScheduler", ode, 100),
            "diffusers DDPM (checkpoint config), 100 steps": theirs_run("DDPMScheduler", schedulers.KANDINSKY_2_2_DDPM, 100)}
    return {name: ((x.float() - reference).norm() / reference.norm()).item() for name, x in runs.items()}


def run(args, base, rows):
    """Solver accuracy rows: relative L2 distance of final latents to a 1000-step DDIM reference."""
    size = 64 if args.full else 256
    r = H.child({**base, "task": "solver", "size": size, "decoder": base["decoder"] if args.full else None})
    model = "full-size UNet" if args.full else "tiny random UNet (UNET_22_TINY)"
    for name, err in r.items():
        rows.append(f"solver accuracy, {model} at {size}², |x - x_ref| / |x_ref| vs 1000-step DDIM | {name}: {err:.4f}")
