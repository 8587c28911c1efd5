"""Images: manifests, indexes, configs, platform matching, pull and unpack."""
