"""Billing conventions that turn a platform's quoted prices into rates rgt can add up."""

from __future__ import annotations

# The month a $/GB/month storage price is prorated over: 30 days. vast.ai quotes storage per
# GB-month and bills it per second; its own CLI converts between the two with a 30-day month
# (vastai 1.9.1, cli/commands/price_increase.py: _SEC_PER_MONTH = 3600 * 24 * 30; verified
# 2026-12). The emulator's meter and rgt's estimates both read this one figure, so a figure rgt
# predicts is the figure the emulator bills.
HOURS_PER_MONTH = 30 * 24.0
