"""Offline preprocessing (audio, faces, records) and the tf.data training reader.

Heavy work (VAD, log-mel, face alignment) runs once in `v2f prepare`; the reader only parses,
crops, flips and batches.
"""
