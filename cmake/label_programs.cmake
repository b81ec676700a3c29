# cmake -DBUILD_DIR=<build tree> -DLABEL=<ctest label> -P label_programs.cmake
# Prints, one a line, the program each ctest test carrying LABEL runs (the first word of its
# command), read from the tree's CTestTestfile.cmake files — so it works before anything is
# built, which `ctest --show-only` does not. scripts/test.sh uses it to build only the
# programs a labelled stage runs.
cmake_minimum_required(VERSION 3.21)
if(NOT BUILD_DIR OR NOT LABEL)
  message(FATAL_ERROR "label_programs.cmake: -DBUILD_DIR=... -DLABEL=... are required")
endif()

# CTestTestfile.cmake is a CMake script of add_test, set_tests_properties and subdirs calls;
# read it with our own definitions of those three.
function(add_test name program)
  set_property(GLOBAL PROPERTY "iopgtable_program_${name}" "${program}")
endfunction()

function(set_tests_properties)
  set(names)
  set(i 0)
  while(i LESS ARGC AND NOT "${ARGV${i}}" STREQUAL "PROPERTIES")
    list(APPEND names "${ARGV${i}}")
    math(EXPR i "${i} + 1")
  endwhile()
  math(EXPR i "${i} + 1")
  while(i LESS ARGC)
    math(EXPR j "${i} + 1")
    if("${ARGV${i}}" STREQUAL "LABELS" AND j LESS ARGC)
      set(labels "${ARGV${j}}")
      if(LABEL IN_LIST labels)
        set_property(GLOBAL APPEND PROPERTY iopgtable_labelled ${names})
      endif()
    endif()
    math(EXPR i "${i} + 2")
  endwhile()
endfunction()

macro(subdirs)
  foreach(sub ${ARGV})
    if(IS_ABSOLUTE "${sub}")
      include("${sub}/CTestTestfile.cmake" OPTIONAL)
    else()
      include("${CMAKE_CURRENT_LIST_DIR}/${sub}/CTestTestfile.cmake" OPTIONAL)
    endif()
  endforeach()
endmacro()

include("${BUILD_DIR}/CTestTestfile.cmake")

get_property(tests GLOBAL PROPERTY iopgtable_labelled)
list(REMOVE_DUPLICATES tests)
foreach(name IN LISTS tests)
  get_property(program GLOBAL PROPERTY "iopgtable_program_${name}")
  # message() goes to stderr; the caller reads stdout.
  execute_process(COMMAND ${CMAKE_COMMAND} -E echo "${program}")
endforeach()
