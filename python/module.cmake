# dws._core, the native module of the Python package (included by the top-level CMakeLists.txt).
# Under scikit-build-core (`pip install .`) it is installed into the wheel's dws/ next to python/dws/*.py.
# In a plain build it lands in build/python/dws/ together with a copy of the package's .py files, so that
# PYTHONPATH=build/python imports the package as built (the tests do).
if(SKBUILD)
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter Development.Module)
else()
  if(DWS_PYTHON)
    set(Python_EXECUTABLE ${DWS_PYTHON})
  endif()
  find_package(Python 3.9 COMPONENTS Interpreter Development.Module)
endif()
set(_dws_nanobind_dir "")
if(Python_FOUND)
  execute_process(COMMAND ${Python_EXECUTABLE} -m nanobind --cmake_dir OUTPUT_VARIABLE _dws_nanobind_dir
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()
if(NOT _dws_nanobind_dir)
  if(DWS_PYTHON_MODULE STREQUAL "ON")
    message(FATAL_ERROR "DWS_PYTHON_MODULE=ON but nanobind is not importable by ${Python_EXECUTABLE} (pip install nanobind)")
  endif()
  message(STATUS "dws: Python module OFF (no nanobind for ${Python_EXECUTABLE})")
  return()
endif()
find_package(nanobind CONFIG REQUIRED PATHS ${_dws_nanobind_dir} NO_DEFAULT_PATH)
message(STATUS "dws: Python module ON (${Python_EXECUTABLE})")

nanobind_add_module(_core NB_STATIC ${CMAKE_CURRENT_LIST_DIR}/src/dws_module.cc)
target_link_libraries(_core PRIVATE dws)
if(SKBUILD)
  install(TARGETS _core LIBRARY DESTINATION dws)
else()
  set_target_properties(_core PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/python/dws)
  file(GLOB _dws_py_files CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/dws/*.py ${CMAKE_CURRENT_LIST_DIR}/dws/*.pyi
       ${CMAKE_CURRENT_LIST_DIR}/dws/py.typed)
  add_custom_target(dws_py_files ALL
                    COMMAND ${CMAKE_COMMAND} -E copy_if_different ${_dws_py_files} ${CMAKE_BINARY_DIR}/python/dws/
                    DEPENDS ${_dws_py_files})
  add_dependencies(_core dws_py_files)
endif()
