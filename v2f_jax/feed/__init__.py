"""Batches from the reader to the step without making the accelerator wait.

- `device_prefetch`: batches put on the devices ahead of the step, on a background thread.
- `device_inputs`: the reader's compact batches (float16 mels, uint8 faces, crop starts)
  expanded inside the jitted step.
- `resident_data`: a split held in device (or host) memory, batches gathered from it by index.
"""
