"""Token ids of the Qwen3-VL vocabulary that preparing and prefix sharing both need (the vision pads)."""

IMAGE_PAD_ID = 151655
VIDEO_PAD_ID = 151656
