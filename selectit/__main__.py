from selectit.cli import main

if __name__ == "__main__":  # the vLLM engine starts processes that re-import this module
    main(prog_name="selectit")
