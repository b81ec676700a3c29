# Runs one iopt golden case: cmake -DIOPT=<iopt> -DSCRIPT=<file.iopt> -DEXPECT=<prefix> -P run_case.cmake
#
# The script says how to run it in comment lines (iopt ignores comments):
#   # args: <command-line words after iopt>      (required)
#   # exit: <status>                             (optional, default 0)
#   # drop: <regex>                              (optional: stdout lines starting with a match
#                                                 are left out before comparing, e.g. timings)
# Expected output next to EXPECT: <prefix>.out is stdout (absent: no output); <prefix>.err is
# stderr exactly, or <prefix>.err.re a regular expression the whole of stderr must match
# (absent both: nothing on stderr). Every comparison is exact.
foreach(var IOPT SCRIPT EXPECT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_case.cmake: -D${var}= is required")
  endif()
endforeach()

file(STRINGS "${SCRIPT}" args_line REGEX "^# args:")
if(NOT args_line)
  message(FATAL_ERROR "${SCRIPT}: no '# args:' line")
endif()
list(GET args_line 0 args_line)
string(REGEX REPLACE "^# args:[ \t]*" "" args_line "${args_line}")
separate_arguments(args UNIX_COMMAND "${args_line}")

set(expected_exit 0)
file(STRINGS "${SCRIPT}" exit_line REGEX "^# exit:")
if(exit_line)
  list(GET exit_line 0 exit_line)
  string(REGEX REPLACE "^# exit:[ \t]*" "" expected_exit "${exit_line}")
endif()

set(expected_out "")
if(EXISTS "${EXPECT}.out")
  file(READ "${EXPECT}.out" expected_out)
endif()

execute_process(COMMAND "${IOPT}" ${args}
  INPUT_FILE "${SCRIPT}"
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE status)

file(STRINGS "${SCRIPT}" drop_line REGEX "^# drop:")
if(drop_line)
  list(GET drop_line 0 drop_line)
  string(REGEX REPLACE "^# drop:[ \t]*" "" drop_pattern "${drop_line}")
  set(out "\n${out}")
  while(out MATCHES "\n${drop_pattern}[^\n]*\n")
    string(REGEX REPLACE "\n${drop_pattern}[^\n]*\n" "\n" out "${out}")
  endwhile()
  string(SUBSTRING "${out}" 1 -1 out)
endif()

set(problems "")
if(NOT status STREQUAL expected_exit)
  string(APPEND problems "exit status ${status}, expected ${expected_exit}\n")
endif()
if(NOT out STREQUAL expected_out)
  get_filename_component(name "${EXPECT}" NAME)
  set(actual "${CMAKE_CURRENT_BINARY_DIR}/${name}.actual.out")
  file(WRITE "${actual}" "${out}")
  string(APPEND problems "stdout differs from ${EXPECT}.out (actual output: ${actual})\n")
endif()
if(EXISTS "${EXPECT}.err")
  file(READ "${EXPECT}.err" expected_err)
  if(NOT err STREQUAL expected_err)
    string(APPEND problems "stderr is:\n${err}expected:\n${expected_err}")
  endif()
elseif(EXISTS "${EXPECT}.err.re")
  file(READ "${EXPECT}.err.re" pattern)
  string(STRIP "${pattern}" pattern)
  if(NOT err MATCHES "^${pattern}\n$")
    string(APPEND problems "stderr is:\n${err}expected to match:\n${pattern}\n")
  endif()
elseif(NOT err STREQUAL "")
  string(APPEND problems "unexpected stderr:\n${err}")
endif()

if(problems)
  message(FATAL_ERROR "iopt ${args_line} < ${SCRIPT}\n${problems}")
endif()
