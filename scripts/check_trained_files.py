"""Checks that files written by `rcaflow train` load in the Python references (not run in CI).

    python scripts/check_trained_files.py --oracle O.safetensors --arch resnet18 --stem cifar \
        --classes 10 [--ddpm DIR] [--data DATA_DIR/eval]

Oracle: the safetensors state_dict loads into torchvision's resnet18/34 (cifar stem: conv1 3x3/1,
no max-pool) with `strict=True`; a narrower network (`train oracle --width`, read here from
conv1.weight) is built from torchvision's own ResNet and BasicBlock with the stage widths scaled; with --data, its eval-mode accuracy on that ImageFolder is
printed (imagenet normalisation), to compare with rcaflow's baseline file.
DDPM: `diffusers.UNet2DModel.from_pretrained(DIR)` and `DDPMScheduler.from_pretrained(DIR)`
load; one forward pass with class labels runs and gives the sample's shape.
"""

import argparse
import sys

import torch


def check_oracle(path, arch, stem, classes, data):
    import torchvision
    from safetensors.torch import load_file

    state = load_file(path)
    width = state["conv1.weight"].shape[0]
    model = getattr(torchvision.models, arch)(num_classes=classes)
    if width != 64:
        # torchvision's ResNet with every stage `width / 64` times as wide (same keys).
        from torchvision.models.resnet import BasicBlock

        layers = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}[arch]
        model.inplanes = width
        model.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
        model.bn1 = torch.nn.BatchNorm2d(width)
        for k, w in enumerate([width, 2 * width, 4 * width, 8 * width]):
            setattr(model, f"layer{k + 1}", model._make_layer(BasicBlock, w, layers[k], stride=1 if k == 0 else 2))
        model.fc = torch.nn.Linear(8 * width, classes)
    if stem == "cifar":
        model.conv1 = torch.nn.Conv2d(3, width, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    model.load_state_dict(state, strict=True)
    model.eval()
    print(f"oracle: {path} loads into torchvision {arch} ({stem} stem, width {width}, {classes} classes), strict=True")
    if data:
        import torchvision.transforms as T

        tf = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        ds = torchvision.datasets.ImageFolder(data, transform=tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=64)
        correct = total = 0
        with torch.no_grad():
            for x, y in loader:
                correct += (model(x).argmax(1) == y).sum().item()
                total += len(y)
        print(f"oracle: torchvision accuracy on {data}: {correct / total:.4f} ({correct}/{total})")


def check_ddpm(folder):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder)
    sched = DDPMScheduler.from_pretrained(folder)
    size = unet.config.sample_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 500]), class_labels=torch.tensor([0, 1])).sample
    assert out.shape == x.shape, out.shape
    print(
        f"ddpm: {folder} loads in diffusers (UNet2DModel, {sum(p.numel() for p in unet.parameters())} parameters, "
        f"{unet.config.num_class_embeds} classes; DDPMScheduler T={sched.config.num_train_timesteps}); forward gives {tuple(out.shape)}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oracle")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--stem", default="cifar")
    p.add_argument("--classes", type=int)
    p.add_argument("--data")
    p.add_argument("--ddpm")
    a = p.parse_args()
    if not a.oracle and not a.ddpm:
        p.error("nothing to check: give --oracle and/or --ddpm")
    if a.oracle:
        if a.classes is None:
            p.error("--oracle needs --classes")
        check_oracle(a.oracle, a.arch, a.stem, a.classes, a.data)
    if a.ddpm:
        check_ddpm(a.ddpm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
