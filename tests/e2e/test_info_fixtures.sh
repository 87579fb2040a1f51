# `ferry info` agrees with the fixture tables (fixtures/README.md §9) on every model.
source "$(dirname "$0")/lib.sh"
run_case "info matches fixture tables" python3 "$HERE/info_check.py"
finish
