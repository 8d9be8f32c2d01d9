"""Banking demo: accounts with exact money, and transfers that finish or are compensated."""
