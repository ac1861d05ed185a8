"""The alert engine: rules, lifecycle and the Faust app that runs them (issue 7)."""
