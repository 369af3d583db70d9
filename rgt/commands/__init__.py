"""One module per `rgt` sub-command; see `rgt.cli` for the contract each module follows."""
