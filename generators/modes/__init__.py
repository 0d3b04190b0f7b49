"""Conditioning modes, one plug-in per module (see `base`): text, img2img, inpaint,
ControlNet and IP-Adapter."""
