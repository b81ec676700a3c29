# Checks that a fuzz target picks formats (or nested pairs) by the names fuzz/format_names.txt
# gives them: runs PROGRAM with IOPGTABLE_FUZZ_LIST=1 and checks that the file's `format ...`
# lines (KIND ops, hostile_table, sharing) or `pair ...` lines (KIND nested_table) are the first
# lines of what it prints, in order. Entries appended to the lists need no edit here (seeds
# keep their meaning); one inserted or moved in the middle fails.
# cmake -DPROGRAM=<fuzz target> -DKIND=<name> -DNAMES=<format_names.txt> -P check_names.cmake
if(KIND STREQUAL "nested_table")
  set(prefix "pair ")
else()
  set(prefix "format ")
endif()
file(STRINGS "${NAMES}" lines)
set(want "")
foreach(line IN LISTS lines)
  string(FIND "${line}" "${prefix}" at)
  if(at EQUAL 0)
    string(APPEND want "${line}\n")
  endif()
endforeach()
execute_process(COMMAND ${CMAKE_COMMAND} -E env IOPGTABLE_FUZZ_LIST=1 "${PROGRAM}"
                OUTPUT_VARIABLE got RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} exited ${rc} when asked for its names")
endif()
string(LENGTH "${want}" want_length)
string(SUBSTRING "${got}" 0 ${want_length} got_prefix)
if(NOT got_prefix STREQUAL want)
  message(FATAL_ERROR "${PROGRAM} picks by these names:\n${got}\nbut ${NAMES} (which fuzz/make_seeds.py "
                      "names seeds by) says they begin:\n${want}\nUpdate the file, then run fuzz/make_seeds.py.")
endif()
message(STATUS "${KIND}: names agree with ${NAMES}")
