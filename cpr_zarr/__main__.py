from cpr_zarr.cli import main

main(prog_name="cpr-zarr")
