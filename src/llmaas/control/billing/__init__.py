"""What requests cost and who pays: prices (catalog), budgets and their grants, metering and usage."""
