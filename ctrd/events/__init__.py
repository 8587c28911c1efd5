"""The events exchange: publish, subscribe, filters."""
