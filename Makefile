# The README's commands. Each one sets up what it needs on a fresh machine first.
.PHONY: demo test bench
demo:
	tools/demo.sh
test:
	tools/test.sh
bench:
	tools/bench.sh
