from selectit.cli import main

main(prog_name="selectit")
