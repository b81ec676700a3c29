# cmake -P build_and_run.cmake: configures a consumer project in a clean build directory,
# builds it and runs its `consumer` program; any failing step fails the script.
#   -DSOURCE_DIR=<consumer project> -DBINARY_DIR=<scratch build dir> -DGENERATOR=<generator>
#   [-DCXX_COMPILER=<path>] [-DMAKE_PROGRAM=<path>] [-DBUILD_TYPE=<type>]
#   [-DPREFIX=<install prefix to find iopgtable in>] [-DVERSION=<version to ask find_package for>]
#   [-DIOPGTABLE_SOURCE_DIR=<iopgtable source, for add_subdirectory>]
foreach(var SOURCE_DIR BINARY_DIR GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "build_and_run.cmake: -D${var}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE ${BINARY_DIR})

set(options -G "${GENERATOR}" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(CXX_COMPILER)
  list(APPEND options -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
if(MAKE_PROGRAM)
  list(APPEND options -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
if(BUILD_TYPE)
  list(APPEND options -DCMAKE_BUILD_TYPE=${BUILD_TYPE})
endif()
if(PREFIX)
  list(APPEND options -DCMAKE_PREFIX_PATH=${PREFIX} -DIOPGTABLE_EXPECTED_PREFIX=${PREFIX})
endif()
if(VERSION)
  list(APPEND options -DIOPGTABLE_EXPECTED_VERSION=${VERSION})
endif()
if(IOPGTABLE_SOURCE_DIR)
  list(APPEND options -DIOPGTABLE_SOURCE_DIR=${IOPGTABLE_SOURCE_DIR})
endif()

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " shown "${ARGV}")
    message(FATAL_ERROR "failed (${rc}): ${shown}")
  endif()
endfunction()

run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR} ${options})
if(BUILD_TYPE)
  run(${CMAKE_COMMAND} --build ${BINARY_DIR} --config ${BUILD_TYPE})
else()
  run(${CMAKE_COMMAND} --build ${BINARY_DIR})
endif()

# Single-config generators put the program at the top; multi-config ones in a per-config folder.
find_program(program consumer PATHS ${BINARY_DIR} ${BINARY_DIR}/${BUILD_TYPE} NO_DEFAULT_PATH NO_CACHE)
if(NOT program)
  message(FATAL_ERROR "the consumer program was not built in ${BINARY_DIR}")
endif()
run(${program})
