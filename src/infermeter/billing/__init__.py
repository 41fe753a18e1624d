"""Pricing, invoices, the ledger and its stores."""
