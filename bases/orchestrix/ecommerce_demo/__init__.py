"""E-commerce demo: orders that reserve stock and take payment, or release the stock again."""
