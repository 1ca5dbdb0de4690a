"""What the data is, defined once: the audio rate, the feature and image sizes, the corpus layout.

Every module that writes, reads or checks voices, faces or metadata takes these from here.
"""

SAMPLE_RATE = 16_000  # Hz; every voice is resampled to it (VoxCeleb's own rate)
N_MELS = 64  # log-mel bins per frame (the reference's front end)
IMAGE_SIZE = 64  # faces are IMAGE_SIZE x IMAGE_SIZE x 3, uint8 RGB on disk

# The reference's split: identities whose VGGFace name starts with one of these are held out.
TEST_INITIALS = "ABCDE"
# VoxCeleb1's `vox1_meta.csv` (tab-separated), in its own column order.
META_COLUMNS = ("VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set")

GENDER_CODES = {"m": 0, "f": 1}
UNKNOWN_GENDER = -1
