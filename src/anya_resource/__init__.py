"""anya-resource."""
